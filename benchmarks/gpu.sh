#!/usr/bin/env bash
# One prepared GPU check (issue 15): on a CUDA machine, in under 8 minutes on one GPU, runs and prints
#   1. train_throughput.py  ResNet-50 224 px fine-tuning step, bf16 + channels_last, data on the device,
#                           peak memory (goal on one H200: >= 4,000 images/s)
#   2. fgsm.py              224 px ResNet-50 and 64 px ResNet-18: both ratios (goals >= 3x and >= 20x)
#   3. data_pipeline.py     --device cuda
#   4. tests/gpu            CUDA-only correctness tests (bf16 learns, FGSM eps 0 = clean, CUDA->CPU load)
#   5. quickstart sweep     resources.gpu=0.25: trials at the same time on one GPU (node / GPU ids tagged)
#   6. evaluation sweeps    224 px ResNet-50 trained one epoch (trained once, reused), wall time per run
# On a machine without CUDA it says so in one line and exits 0. Output also goes to $GPU_CHECK_LOG
# (default: gpu_check.log in the work folder).
#     bash benchmarks/gpu.sh            (PYTHON=/path/to/python to choose the interpreter)
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "gpu.sh: $PY cannot import torch; install the project first (README: carrying the wheels)." >&2
    exit 1
fi
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu.sh: no CUDA device here (torch.cuda.is_available() is False with $PY); nothing to check."
    exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/fer_ray_gpu_check.XXXXXX")"   # mlflow.db, ray_results, reports
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" FER_RAY_CACHE="$WORK/cache"
LOG="${GPU_CHECK_LOG:-$WORK/gpu_check.log}"
FAILED=()
exec > >(tee "$LOG") 2>&1

step() {  # step <name> <seconds allowed> <command...>
    local name="$1" limit="$2"; shift 2
    echo; echo "=== $name"
    local start=$SECONDS
    (cd "$WORK" && timeout "$limit" "$@")
    local code=$?
    echo "--- $name: exit $code, $((SECONDS - start)) s"
    [ "$code" -eq 0 ] || FAILED+=("$name (exit $code)")
}

echo "fer_ray GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), work folder $WORK"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c "import torch, torchvision; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'torchvision', torchvision.__version__)"

B="$REPO/benchmarks"
step "train throughput (goal >= 4000 images/s on one H200)" 120 \
    "$PY" "$B/train_throughput.py" --arch resnet50 --image-size 224 --batch-size 256 --steps 30 --warmup 10 --device cuda
step "fgsm 224 px resnet50" 120 \
    "$PY" "$B/fgsm.py" --arch resnet50 --size 224 --images 256 --batch-size 128 --seed-style-images 8 --device cuda
step "fgsm 64 px resnet18" 60 \
    "$PY" "$B/fgsm.py" --arch resnet18 --size 64 --images 512 --batch-size 256 --seed-style-images 16 --device cuda
step "data pipeline --device cuda" 90 \
    "$PY" "$B/data_pipeline.py" --device cuda --images 300 --repeats 3
step "CUDA-only tests" 120 "$PY" -m pytest -q -p no:cacheprovider "$REPO/tests/gpu"

DB="sqlite:///$WORK/mlflow.db"
step "quickstart, 4 trials on one GPU (resources.gpu=0.25)" 120 \
    "$PY" -m fer_ray.sweep "$REPO/sweeps/quickstart.yaml" --tracking-uri "$DB" \
    --set resources.gpu=0.25 resources.cpu=1 tracking.experiment=gpu-quickstart
step "fractional GPU: trials overlapped on one GPU" 30 \
    "$PY" "$B/sweep_runs.py" "$DB" --expect-concurrent 2
# The study's recipe (224 px ResNet-50) for one epoch and one seed, offline weights; the first sweep
# trains it, the others reuse the trained model by its recipe hash.
STUDY=(--profile none --tracking-uri "$DB" --set model.weights=none train.epochs=1 "source.train_seeds=[0]"
       resources.gpu=0.25 tracking.experiment=gpu-evaluation)
for sweep in evaluate noise_sig epsilon; do
    step "evaluation sweep $sweep (224 px resnet50)" 120 "$PY" -m fer_ray.sweep "$REPO/sweeps/$sweep.yaml" "${STUDY[@]}"
done
step "wall time per run" 30 "$PY" "$B/sweep_runs.py" "$DB"

echo
echo "=== total $SECONDS s (budget 480 s); log: $LOG"
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${FAILED[@]}"
    exit 1
fi
echo "all steps passed"
