"""CUDA-only correctness tests: collected only where torch sees a CUDA device (benchmarks/gpu.sh runs
them there); elsewhere pytest does not collect them at all (not skipped: absent)."""

import torch

collect_ignore_glob = [] if torch.cuda.is_available() else ["test_*.py"]
