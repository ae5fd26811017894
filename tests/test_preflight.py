"""Pre-flight (issue 13): bad data, weights and model sources are found in the driver before Ray starts:
one line naming the file or key and what to do, exit 2, and no MLflow run or Tune folder left behind."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from conftest import TINY
from fer_ray.core.data.kdef import EXPRESSION_CODES
from fer_ray.orchestrate.preflight import PreflightError, data_configs, run_preflight
from fer_ray.orchestrate.spec import load_spec
from fer_ray.sweep import main

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"


def write_kdef(root: Path, people: int = 3, codes=tuple(EXPRESSION_CODES)) -> list[Path]:
    """Tiny KDEF-named JPEGs (session A, straight on): ``people`` per gender, one per expression code."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for gender in "FM":
        for person in range(1, people + 1):
            for index, code in enumerate(codes):
                path = root / f"A{gender}{person:02d}{code}S.JPG"
                Image.new("RGB", (24, 32), (30 * index, 20 * person, 120 if gender == "F" else 60)).save(path)
                paths.append(path)
    return paths


def _run_cli(tmp_path: Path, root: Path, *extra: str) -> int:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return main(
        [
            str(QUICKSTART),
            "--set",
            *TINY,
            "data.dataset=kdef",
            f"data.root={root}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--tracking-uri",
            uri,
            "--storage",
            str(tmp_path / "ray_results"),
            "--num-cpus",
            "1",
            *extra,
        ]
    )


def _assert_nothing_started(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    if store.exists():  # the store may be opened, but it holds no run
        with sqlite3.connect(store) as db:
            assert db.execute("select count(*) from runs").fetchone()[0] == 0
    assert not (tmp_path / "ray_results").exists(), "no Tune folder"
    assert not (tmp_path / "reports").exists()


def _corrupt(root: Path) -> Path:
    write_kdef(root)
    bad = root / "AF02HAS.JPG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return bad


@pytest.mark.parametrize(
    ("make", "named", "advice"),
    [
        (lambda root: root / "missing", "missing does not exist", "set data.root"),
        (lambda root: root.mkdir() or root, "holds no KDEF-named images", "point data.root"),
        (
            lambda root: write_kdef(root, codes=("AF", "AN", "DI", "HA", "NE", "SA")) and root,
            "['surprised']",
            "add images of the missing class",
        ),
        (lambda root: _corrupt(root) and root, "AF02HAS.JPG", "replace or delete that file"),
    ],
    ids=["missing-root", "empty-folder", "class-without-images", "corrupt-jpeg"],
)
@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_bad_data_exits_2_with_one_line_before_anything_starts(make, named, advice, dry_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = make(tmp_path / "kdef")
    code = _run_cli(tmp_path, root, *(["--dry-run"] if dry_run else []))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: data (kdef, data.root="), err
    assert named in lines[0] and advice in lines[0]
    _assert_nothing_started(tmp_path)


def test_missing_model_file_and_weights_file_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                str(REPO / "sweeps" / "noise_sig.yaml"),
                "--set",
                *TINY,
                f"source.model={tmp_path / 'gone.pt'}",
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'mlflow.db'}",
            ]
        )
        == 2
    )
    assert "gone.pt" in capsys.readouterr().err
    assert main([str(QUICKSTART), "--set", *TINY, f"model.weights={tmp_path / 'w.pt'}", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "model.weights: file" in err and "w.pt" in err
    _assert_nothing_started(tmp_path)


def test_preflight_builds_the_tensor_cache_once_so_trials_find_it(tmp_path):
    from fer_ray.core.data.cache import load_image_tensors
    from fer_ray.core.data.datasets import read_dataset
    from fer_ray.core.data.fingerprint import tensor_store

    write_kdef(tmp_path / "kdef")
    spec = load_spec(QUICKSTART, [*TINY, "data.dataset=kdef", f"data.root={tmp_path / 'kdef'}", f"data.cache_dir={tmp_path / 'cache'}"])
    dataset = read_dataset(spec.data)
    store = tensor_store(dataset, spec.data.image_size, spec.data.cache_dir)
    (line,) = run_preflight(spec, None)
    assert store.is_file() and "42 images, 7 classes with images, 6 people" in line and "tensor cache built" in line
    built = store.stat().st_mtime_ns
    images = load_image_tensors(dataset, spec.data.image_size, spec.data.cache_dir)  # what a trial does
    assert tuple(images.shape) == (42, 3, 32, 32) and store.stat().st_mtime_ns == built, "the trial loads, not rebuilds"
    (again,) = run_preflight(spec, None, prepare=False)
    assert "tensor cache found" in again


def test_generated_faces_are_made_and_cached_by_the_preflight(tmp_path):
    spec = load_spec(QUICKSTART, [*TINY, f"data.cache_dir={tmp_path}"])
    (line,) = run_preflight(spec, None)
    assert line.startswith("data (synthetic, generated faces): 168 images"), line  # 6 people x 2 genders x 2 sessions x 7 expressions
    assert len(list((tmp_path / "tensors").glob("*.pt"))) == 1 and list((tmp_path / "synthetic").iterdir())


def test_one_check_per_data_set_the_grid_reads(tmp_path):
    spec = load_spec(REPO / "sweeps" / "dataset_fraction.yaml", [f"data.cache_dir={tmp_path}"])
    assert len(data_configs(spec)) == 1, "train_fraction does not change what is read"
    spec = load_spec(QUICKSTART, ["search.grid={data.image_size: [32, 48], train.lr: [0.1]}"])
    assert [config.image_size for config in data_configs(spec)] == [32, 48]


def test_preflight_error_is_a_spec_error():
    from fer_ray.orchestrate.spec import SpecError

    assert issubclass(PreflightError, SpecError)


@pytest.mark.slow
@pytest.mark.parametrize(
    "search",
    [
        ["search.grid={train.lr: [0.001]}"],
        ["search.grid={}", "search.optuna={num_samples: 1, space: {train.lr: {loguniform: [0.0001, 0.01]}}}"],
    ],
    ids=["grid", "optuna-asha"],
)
def test_bad_input_inside_a_trial_fails_once_and_is_never_retried(search, tmp_path, monkeypatch):
    """Real Ray and MLflow: a data error a trial meets itself (here the pre-flight is skipped) ends the
    trial at once, although failure.max_retries allows 2 retries; the summary and MLflow say why."""
    import ray

    from fer_ray.orchestrate.driver import _start_ray_and_tracking, run_stage, tracker_for
    from fer_ray.orchestrate.tracking import TAG_ATTEMPTS
    from fer_ray.orchestrate.trial import TAG_INPUT_ERROR, TRIAL_INPUT_ERROR

    monkeypatch.chdir(tmp_path)
    _corrupt(tmp_path / "kdef")
    spec = load_spec(
        QUICKSTART,
        [
            *TINY,
            "data.dataset=kdef",
            f"data.root={tmp_path / 'kdef'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "search.seeds=[0]",
            *search,
            "failure.max_retries=2",
            "resources.gpu=0",  # run_stage takes a resolved spec (run_sweep resolves gpu: auto)
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"storage.path={tmp_path / 'ray_results'}",
        ],
    )
    tracker = tracker_for(spec)
    _start_ray_and_tracking(tracker, None, 1)
    try:
        outcome = run_stage(spec, None, None, tracker)
    finally:
        ray.shutdown()
    assert [row["status"] for row in outcome.rows] == ["error"] and not outcome.all_succeeded
    assert "AF02HAS.JPG" in outcome.rows[0]["metrics"][TRIAL_INPUT_ERROR]
    (child,) = tracker.child_runs(outcome.parent_run_id)
    assert child.info.status == "FAILED"
    assert child.data.tags[TAG_ATTEMPTS] == "1", "the trial ran once: a retry reopens its run and counts up"
    assert "DataError: cannot decode image" in child.data.tags[TAG_INPUT_ERROR]
    assert tracker.get_run(outcome.parent_run_id).info.status == "FAILED"
