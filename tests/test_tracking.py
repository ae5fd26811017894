"""MLflow tracking layer against real MLflow: sqlite in tmp_path, and one real `mlflow server`."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pytest  # noqa: E402

from conftest import free_port  # noqa: E402
from fer_ray.orchestrate.provenance import git_sha, package_versions, spec_hash  # noqa: E402
from fer_ray.orchestrate.tracking import (  # noqa: E402
    EXPERIMENT_KIND,
    MAX_PARAM_VAL_LENGTH,
    TAG_ATTEMPTS,
    TAG_EXPERIMENT_KIND,
    TAG_PARENT,
    TAG_ROLE,
    TAG_SPEC_HASH,
    TAG_SWEEP,
    TAG_TRIAL_KEY,
    ParamConflictError,
    Tracker,
    TrackingError,
    flatten,
    mlflow_key,
    tag_filter,
)


@pytest.fixture(scope="module")
def sqlite_db(tmp_path_factory) -> Path:
    """One sqlite file for the module: creating MLflow's tables costs seconds, so it is made once."""
    return tmp_path_factory.mktemp("mlflow") / "mlflow.db"


@pytest.fixture()
def tracker(sqlite_db, request) -> Tracker:
    """A fresh experiment per test in the module's sqlite database."""
    tracker = Tracker(f"sqlite:///{sqlite_db}", f"test-{request.node.name}")
    tracker.check()
    return tracker


# ------------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------------


def test_flatten_makes_dotted_keys_and_json_lists():
    nested = {
        "model": {"arch": "resnet18", "head": {"dropout": 0.5, "hidden": None}},
        "seeds": [0, 1, 2],
        "angles": ("S", "HL"),
        "label_map": {},
        "path": Path("/data/kdef"),
        "augment": True,
    }
    assert flatten(nested) == {
        "model.arch": "resnet18",
        "model.head.dropout": 0.5,
        "model.head.hidden": "None",
        "seeds": "[0, 1, 2]",
        "angles": '["S", "HL"]',
        "label_map": "{}",
        "path": "/data/kdef",
        "augment": True,
    }
    assert flatten({"b": 1}, prefix="train") == {"train.b": 1}


def test_keys_uris_and_hashes():
    assert mlflow_key("acc@eps=0.01") == "acc_at_eps_0.01"
    assert mlflow_key("model.arch") == "model.arch"
    relative = Tracker("sqlite:///some/dir/mlflow.db", "e")
    assert relative.uri == f"sqlite:///{Path.cwd() / 'some/dir/mlflow.db'}"
    for bad in ("./mlruns", "file:///tmp/mlruns", "ftp://host/x", "sqlite://"):
        with pytest.raises(TrackingError, match="URI"):
            Tracker(bad, "e")

    assert spec_hash({"a": 1, "b": [1, 2]}) == spec_hash({"b": [1, 2], "a": 1})
    assert spec_hash({"a": 1}) != spec_hash({"a": 2})
    assert len(spec_hash({})) == 12 and int(spec_hash({}), 16) >= 0

    versions = package_versions()
    assert versions["mlflow"] == mlflow.__version__
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(versions) >= {"torch", "torchvision", "ray", "optuna", "scikit-learn", "numpy", "fer_ray"}


def test_git_sha_inside_and_outside_a_repository(tmp_path):
    assert git_sha(tmp_path) is None  # /tmp is no work tree
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert git_sha(repo) is None  # a repository without commits
    (repo / "f.txt").write_text("x")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    expected = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True)
    assert git_sha(repo) == expected.stdout.strip()


# ------------------------------------------------------------------------------------------------
# sqlite backend
# ------------------------------------------------------------------------------------------------


def test_parent_children_reuse_metrics_and_artifacts(tracker, sqlite_db, tmp_path):
    parent = tracker.parent_run("noise_sig", "sweep-1", tags={"origin": "test"}, params={"model": {"arch": "resnet18"}})
    assert tracker.parent_run("noise_sig", "sweep-1", params={"model": {"arch": "resnet18"}}) == parent

    children = {f"trial_{i}": tracker.child_run(parent, f"trial_{i}", f"noise-{i}", params={"lr": 0.1 * i, "seed": i}) for i in range(3)}
    for step in range(3):
        for run_id in children.values():
            tracker.log_metrics(run_id, {"train_loss": 1.0 / (step + 1), "acc@eps=0.01": 0.25 * step}, step)

    # a retried trial finds its run again: same id, RUNNING, attempt 2, no new run
    first = children["trial_1"]
    tracker.finish(first, "FAILED")
    assert tracker.child_run(parent, "trial_1", "noise-1", params={"lr": 0.1, "seed": 1}) == first
    again = tracker.client.get_run(first)
    assert again.info.status == "RUNNING"
    assert again.data.tags[TAG_ATTEMPTS] == "2"

    child_runs = tracker.find_runs(tag_filter(TAG_PARENT, parent))
    assert sorted(run.info.run_id for run in child_runs) == sorted(children.values())
    assert len(tracker.find_runs()) == 4  # 1 parent + 3 children, nothing duplicated
    for run in child_runs:
        assert run.data.tags[TAG_PARENT] == parent
        assert run.data.tags[TAG_ROLE] == "child"
        assert run.data.tags[TAG_SWEEP] == "noise_sig"  # copied from the parent
        assert run.data.tags["fer_ray.version.mlflow"] == mlflow.__version__

    assert tracker.metric_history(first, "train_loss") == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert tracker.metric_history(first, "acc@eps=0.01") == [(0, 0.0), (1, 0.25), (2, 0.5)]

    frame = tracker.children(parent)
    assert len(frame) == 3
    assert set(frame["tags.mlflow.parentRunId"]) == {parent}
    assert sorted(frame[f"tags.{TAG_TRIAL_KEY}"]) == ["trial_0", "trial_1", "trial_2"]
    assert sorted(frame["params.seed"]) == ["0", "1", "2"]
    assert list(frame["metrics.acc_at_eps_0.01"]) == [0.5, 0.5, 0.5]

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(os.urandom(4096))
    tracker.log_artifact(first, checkpoint, "checkpoints")
    figure, axes = plt.subplots(figsize=(2, 2))
    axes.plot([0, 1, 2], [1.0, 0.5, 0.33])
    assert tracker.log_figure(first, figure, "curves") == "curves.png"
    plt.close(figure)
    digest = tracker.log_spec(first, {"experiment": "noise", "seed": 1})
    assert tracker.client.get_run(first).data.tags[TAG_SPEC_HASH] == digest
    assert tracker.artifact_paths(first) == ["checkpoints/model.pt", "curves.png", "spec.json"]
    assert tracker.client.get_run(first).info.artifact_uri.startswith((sqlite_db.parent / "mlartifacts").as_uri())

    local = tracker.download_artifact(first, "checkpoints/model.pt", tmp_path / "download")
    assert local.read_bytes() == checkpoint.read_bytes()
    png = tracker.download_artifact(first, "curves.png", tmp_path / "download")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_find_finished_run_returns_latest_finished(tracker):
    parent = tracker.parent_run("train", "sweep-train", tags={}, params={})
    failed = tracker.child_run(parent, "a", "a", tags={"fer_ray.config_hash": "abc123"})
    tracker.finish(failed, "FAILED")
    assert tracker.find_finished_run("fer_ray.config_hash", "abc123") is None
    done = tracker.child_run(parent, "b", "b", tags={"fer_ray.config_hash": "abc123"})
    tracker.finish(done)
    found = tracker.find_finished_run("fer_ray.config_hash", "abc123")
    assert found is not None and found.info.run_id == done
    assert tracker.find_finished_run("fer_ray.config_hash", "other") is None


def test_param_conflict_names_key_and_both_values(tracker):
    parent = tracker.parent_run("s", "sweep-c", tags={}, params={})
    child = tracker.child_run(parent, "t", "t", params={"optim": {"lr": 0.01}, "seed": 0})
    tracker.log_params(child, {"optim": {"lr": 0.01}, "epochs": 3})  # same value again: fine
    with pytest.raises(ParamConflictError, match=r"'optim\.lr': logged '0\.01', now '0\.02'"):
        tracker.child_run(parent, "t", "t", params={"optim": {"lr": 0.02}, "seed": 0})
    assert tracker.client.get_run(child).data.params == {"optim.lr": "0.01", "seed": "0", "epochs": "3"}


def test_long_param_is_truncated_and_kept_whole_as_artifact(tracker, tmp_path):
    parent = tracker.parent_run("s", "sweep-long", tags={}, params={})
    long_value = "x" * (MAX_PARAM_VAL_LENGTH + 500)
    child = tracker.child_run(parent, "t", "t", params={"notes": long_value})
    stored = tracker.client.get_run(child).data.params["notes"]
    assert len(stored) == MAX_PARAM_VAL_LENGTH and stored.endswith("[truncated]")
    tracker.child_run(parent, "t", "t", params={"notes": long_value})  # reuse compares truncated
    full = tracker.download_artifact(child, "params_full/notes.txt", tmp_path / "dl")
    assert full.read_text() == long_value


def test_experiment_opens_in_the_model_training_view(tracker, sqlite_db):
    assert tracker.client.get_experiment(tracker.experiment_id()).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND
    # an experiment made without the tag (by hand, or by an older fer_ray) gets it when fer_ray opens it
    bare_id = tracker.client.create_experiment("made-by-hand")
    assert TAG_EXPERIMENT_KIND not in tracker.client.get_experiment(bare_id).tags
    assert Tracker(f"sqlite:///{sqlite_db}", "made-by-hand").check() == bare_id
    assert tracker.client.get_experiment(bare_id).tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND


def test_deleted_experiment_is_reported(tracker):
    tracker.client.delete_experiment(tracker.experiment_id())
    with pytest.raises(TrackingError, match=f"experiment '{tracker.experiment}' .* is deleted; restore"):
        tracker.check()


def _create_children(tracker, parent_id, prefix, count, barrier, results):
    """Spawned worker: make ``count`` child runs as fast as it can, once both workers are ready."""
    try:
        tracker.experiment_id()
        barrier.wait(timeout=60)
        run_ids = []
        for index in range(count):
            run_id = tracker.child_run(parent_id, f"{prefix}-{index}", f"{prefix}-{index}", params={"i": index})
            tracker.log_metrics(run_id, {"test_acc": index / count}, step=0)
            tracker.finish(run_id)
            run_ids.append(run_id)
        results.put((prefix, run_ids, None))
    except Exception as exc:  # reported to the test, which fails with it
        results.put((prefix, [], repr(exc)))


@pytest.mark.slow
def test_two_processes_create_children_concurrently(tracker):
    parent = tracker.parent_run("s", "sweep-mp", tags={}, params={})
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [
        context.Process(
            target=_create_children,
            args=(tracker, parent, prefix, 5, barrier, results),  # the Tracker itself is pickled
        )
        for prefix in ("p", "q")
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert [error for _, _, error in outcomes] == [None, None]
    run_ids = [run_id for _, ids, _ in outcomes for run_id in ids]
    assert len(set(run_ids)) == 10
    frame = tracker.children(parent)
    assert sorted(frame["run_id"]) == sorted(run_ids)
    assert set(frame["status"]) == {"FINISHED"}


# ------------------------------------------------------------------------------------------------
# http server
# ------------------------------------------------------------------------------------------------


def test_unreachable_server_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError, match=f"{uri}.*unreachable"):
        Tracker(uri, "e").check()
    assert time.monotonic() - started < 10


@pytest.mark.slow  # starts Ray or an MLflow server: out of `make test-fast`
def test_real_server_round_trip(mlflow_server, tmp_path):
    tracker = Tracker(mlflow_server.uri, "fer_ray-server")
    tracker.check()
    parent = tracker.parent_run("quick", "sweep-http", tags={}, params={"data": {"size": 32}})
    child = tracker.child_run(parent, "t0", "quick-0", params={"seed": 0})
    tracker.log_metrics(child, {"val_acc": 0.5, "train_loss": float("inf")}, step=1)
    payload = tmp_path / "weights.bin"
    payload.write_bytes(os.urandom(2048))
    tracker.log_artifact(child, payload, "checkpoints")
    tracker.finish(child)

    assert tracker.child_run(parent, "t0", "quick-0", params={"seed": 0}) == child
    frame = tracker.children(parent)
    assert list(frame["run_id"]) == [child]
    assert frame["metrics.val_acc"].iloc[0] == 0.5
    assert frame["metrics.train_loss"].isna().iloc[0]  # inf is logged as NaN
    downloaded = tracker.download_artifact(child, "checkpoints/weights.bin", tmp_path / "dl")
    assert downloaded.read_bytes() == payload.read_bytes()
    stored = [path for path in mlflow_server.artifacts.rglob("weights.bin") if child in path.parts]
    assert len(stored) == 1 and stored[0].read_bytes() == payload.read_bytes()  # stored where the server was told
