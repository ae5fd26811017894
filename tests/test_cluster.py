"""Multi-node sweeps: the storage / tracking guards, then real sweeps on a real multi-node Ray.

The cluster is ``ray.cluster_utils.Cluster`` on this machine: a head with no CPUs (like cluster.yaml's)
and, added on first use, two worker nodes with one CPU and one fake GPU each; trials ask for half a GPU
and, with torch seeing no CUDA, train on CPU. MLflow is a real ``mlflow server`` process (sqlite
backend, artifacts proxied to a temp folder) on 127.0.0.1. Checked: the driver refusing storage and
tracking the workers cannot reach (head alone), trials spread over the workers with runs and artifacts
through the server, a worker node hard-killed mid-trial, the driver SIGKILLed mid-sweep, the server
unreachable at start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.entities import Run

from conftest import TINY, MlflowServer, free_port
from fer_ray.orchestrate.cluster import (
    HEAD_RESOURCE,
    NETWORK_FILESYSTEMS,
    SHARED_STORAGE_ENV,
    ClusterSetupError,
    check_storage_for_cluster,
    check_tracking_for_cluster,
    filesystem_type,
    spans_machines,
)
from fer_ray.orchestrate.spec import SpecError
from fer_ray.orchestrate.tracking import Tracker

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"
#: Every cluster sweep: TINY data/model, half a (fake) GPU and one CPU per trial, so each worker node
#: runs one trial at a time and two trials at once must use both.
CLUSTER_SWEEP = [*TINY, "resources.gpu=0.5", "resources.cpu=1"]


# ------------------------------------------------------------------------------------------------
# the guards, on plain node records shaped like ray.nodes() entries
# ------------------------------------------------------------------------------------------------


def _node(address: str, cpu: float = 0, gpu: float = 0, head: bool = False, alive: bool = True) -> dict[str, Any]:
    resources = {"memory": 1e9, f"node:{address}": 1.0}
    resources.update({"CPU": cpu} if cpu else {})
    resources.update({"GPU": gpu} if gpu else {})
    resources.update({HEAD_RESOURCE: 1.0} if head else {})
    return {"NodeID": f"{address}-{cpu}-{gpu}", "Alive": alive, "NodeManagerAddress": address, "Resources": resources}


ONE_MACHINE = [_node("10.0.0.1", cpu=8, gpu=1, head=True)]
RAYLETS_ON_ONE_HOST = [_node("10.0.0.1", head=True), _node("10.0.0.1", cpu=1, gpu=1), _node("10.0.0.1", cpu=1, gpu=1)]
TWO_MACHINES = [_node("10.0.0.1", head=True), _node("10.0.0.2", cpu=4, gpu=1)]
HEAD_ONLY = [_node("10.0.0.1", head=True)]  # cluster.yaml right after `ray up`: GPU workers come later


@pytest.fixture()
def local_folder(tmp_path) -> Path:
    folder = tmp_path / "ray_results"
    assert filesystem_type(folder) not in NETWORK_FILESYSTEMS, "this test needs a tmp folder on a local disk"
    return folder


def test_one_machine_takes_local_storage_and_any_tracking(local_folder, monkeypatch):
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    for nodes in (ONE_MACHINE, RAYLETS_ON_ONE_HOST, [*TWO_MACHINES[:1], _node("10.0.0.9", cpu=4, alive=False), *RAYLETS_ON_ONE_HOST[1:]]):
        assert not spans_machines(nodes)
        for storage in (str(local_folder), local_folder.as_uri(), "ray_results"):
            check_storage_for_cluster(storage, nodes)
        for uri in ("sqlite:///mlflow.db", "http://127.0.0.1:5000"):
            check_tracking_for_cluster(uri, nodes)


def test_local_storage_refused_across_machines_with_what_to_set(local_folder, monkeypatch):
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    for storage in (str(local_folder), local_folder.as_uri()):
        with pytest.raises(ClusterSetupError) as error:
            check_storage_for_cluster(storage, TWO_MACHINES)
        message = str(error.value)
        assert storage in message and str(local_folder) in message
        assert "spans 2 machines (10.0.0.1, 10.0.0.2)" in message
        assert "--storage s3://" in message and "NFS" in message and f"{SHARED_STORAGE_ENV}=1" in message
    with pytest.raises(ClusterSetupError, match="no node with CPUs or GPUs for trials yet"):
        check_storage_for_cluster("ray_results", HEAD_ONLY)
    assert issubclass(ClusterSetupError, SpecError)  # the CLI answers it like a bad spec value: exit code 2


def test_remote_or_declared_shared_storage_accepted_across_machines(local_folder, monkeypatch):
    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    for storage in ("s3://bucket/ray_results", "gs://bucket/prefix", "s3://bucket/p?endpoint_override=http://10.0.0.3:9000"):
        check_storage_for_cluster(storage, TWO_MACHINES)
        check_storage_for_cluster(storage, HEAD_ONLY)
    monkeypatch.setenv(SHARED_STORAGE_ENV, "1")
    check_storage_for_cluster(str(local_folder), TWO_MACHINES)
    check_storage_for_cluster(local_folder.as_uri(), HEAD_ONLY)
    monkeypatch.setenv(SHARED_STORAGE_ENV, "0")
    with pytest.raises(ClusterSetupError):
        check_storage_for_cluster(str(local_folder), TWO_MACHINES)


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ("/data/ray_results", "/data/ray_results/probe-1"),
        ("file:///data/ray_results/", "file:///data/ray_results/probe-1"),
        ("s3://bucket/prefix", "s3://bucket/prefix/probe-1"),
        (
            "s3://bucket/p?endpoint_override=http://10.0.0.3:9000&region=eu",
            "s3://bucket/p/probe-1?endpoint_override=http://10.0.0.3:9000&region=eu",
        ),
    ],
)
def test_experiment_path_keeps_a_storage_uris_query_at_the_end(storage, expected):
    from fer_ray.orchestrate.driver import experiment_path

    assert experiment_path(storage, "probe-1") == expected


def test_tune_parses_the_recorded_path_of_a_query_storage_uri():
    """pyarrow (what Tune opens storage with) reads the run folder as part of the path and the query as
    options; run_name appended after the query would have become part of the region instead."""
    import pyarrow.fs

    from fer_ray.orchestrate.driver import experiment_path

    uri = experiment_path("s3://bucket/p?endpoint_override=http://127.0.0.1:9&region=eu-west-1", "probe-1")
    filesystem, path = pyarrow.fs.FileSystem.from_uri(uri)  # parses only: no request is sent
    assert path == "bucket/p/probe-1" and filesystem.region == "eu-west-1"


def test_filesystem_type_finds_the_innermost_mount():
    mounts = "\n".join([
        "/dev/vda / ext4 rw 0 0",
        "nas:/export /mnt/shared nfs4 rw,vers=4.2 0 0",
        "nas:/scratch /mnt/shared/my\\040scratch lustre rw 0 0",
        "tmpfs /mnt/sharedx tmpfs rw 0 0",
    ])  # fmt: skip
    assert filesystem_type(Path("/mnt/shared/ray_results/exp1"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/shared"), mounts) == "nfs4"
    assert filesystem_type(Path("/mnt/shared/my scratch/x"), mounts) == "lustre"
    assert filesystem_type(Path("/mnt/sharedx/y"), mounts) == "tmpfs"
    assert filesystem_type(Path("/home/me/ray_results"), mounts) == "ext4"
    assert {"nfs4", "lustre"} <= NETWORK_FILESYSTEMS and "tmpfs" not in NETWORK_FILESYSTEMS


def test_sqlite_and_loopback_tracking_refused_across_machines():
    for uri in ("sqlite:///mlflow.db", "sqlite:////data/mlflow.db"):
        with pytest.raises(ClusterSetupError) as error:
            check_tracking_for_cluster(uri, TWO_MACHINES)
        assert uri in str(error.value) and "--tracking-uri http://10.0.0.1:5000" in str(error.value)
    for uri in ("http://127.0.0.1:5000", "http://localhost:5000", "http://0.0.0.0:5000", "http://[::1]:5000",
                "postgresql://mlflow@localhost:5432/mlflow"):  # fmt: skip
        with pytest.raises(ClusterSetupError, match="every node reaches") as error:
            check_tracking_for_cluster(uri, TWO_MACHINES)
        assert uri in str(error.value)
    with pytest.raises(ClusterSetupError, match="no node with CPUs or GPUs"):
        check_tracking_for_cluster("sqlite:///mlflow.db", HEAD_ONLY)
    for uri in ("http://10.0.0.1:5000", "https://mlflow.internal.example", "postgresql://mlflow@db.internal:5432/mlflow"):
        check_tracking_for_cluster(uri, TWO_MACHINES)
        check_tracking_for_cluster(uri, HEAD_ONLY)


# ------------------------------------------------------------------------------------------------
# a real multi-node Ray and a real MLflow server (one of each for the module)
# ------------------------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """A ray.cluster_utils.Cluster with a CPU-less head and fake-GPU workers; the test process is its driver."""

    cluster: Any

    @property
    def address(self) -> str:
        return self.cluster.address

    def workers(self) -> dict[str, Any]:
        """Worker nodes by node id (hex)."""
        return {node.node_id: node for node in self.cluster.worker_nodes}

    def add_worker(self) -> None:
        self.cluster.add_node(num_cpus=1, num_gpus=1)
        self.cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def ray_head() -> Iterator[LocalCluster]:
    """The cluster as it starts (cluster.yaml right after `ray up`): the CPU-less head alone."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        ray.init(address=cluster.address)
        yield LocalCluster(cluster)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture()
def ray_cluster(ray_head) -> LocalCluster:
    """The head plus two fake-GPU workers (added on first use, replaced when a test removed one)."""
    while len(ray_head.workers()) < 2:
        ray_head.add_worker()
    return ray_head


@pytest.fixture()
def workdir(tmp_path, monkeypatch) -> Path:
    """reports/ of in-process sweeps land here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _sweep_args(cluster: LocalCluster, server: MlflowServer, storage: Path, experiment: str, *overrides: str) -> list[str]:
    return [
        str(QUICKSTART), "--address", cluster.address, "--tracking-uri", server.uri, "--storage", storage.as_uri(),
        "--set", *CLUSTER_SWEEP, f"tracking.experiment={experiment}", *overrides,
    ]  # fmt: skip


def _runs(server: MlflowServer, experiment: str) -> tuple[list[Run], list[Run]]:
    """(parent runs, child runs) of one MLflow experiment, through the server."""
    tracker = Tracker(server.uri, experiment)
    runs = tracker.find_runs()
    parents = [r for r in runs if r.data.tags.get("fer_ray.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("fer_ray.role") == "child"]
    return parents, children


def _trial_actors() -> dict[str, dict[str, Any]]:
    """Ray Tune's trial actors (any state) by actor id, with the node each ran on. Read from the GCS
    actor table (ray.util.state would need the dashboard, which this cluster does not run)."""
    import ray

    # Tune's function-trainable class: "ImplicitFunc", or "wrap_function.<locals>.ImplicitFunc" once
    # the process has registered it before
    actors = ray._private.state.actors().items()
    return {aid: info for aid, info in actors if info["ActorClassName"].rsplit(".", 1)[-1] == "ImplicitFunc"}


def _experiment_exists(client: mlflow.MlflowClient, name: str) -> bool:
    return client.get_experiment_by_name(name) is not None


def _wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


# ------------------------------------------------------------------------------------------------
# tests on the real cluster
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_driver_refuses_storage_and_tracking_the_workers_cannot_reach(ray_head, mlflow_server, workdir):
    """Needs the driver wiring (driver.run_sweep checks storage, then tracking, after connecting).
    The driver is a subprocess with a time limit: unwired, its trials would wait forever for a CPU."""
    for node in list(ray_head.workers().values()):  # none when this test runs first, as it usually does
        ray_head.cluster.remove_node(node)
    storage = workdir / "storage"
    command = [sys.executable, "-m", "fer_ray.sweep", str(QUICKSTART), "--address", ray_head.address,
               "--tracking-uri", mlflow_server.uri, "--storage", storage.as_uri(),
               "--set", *CLUSTER_SWEEP, "tracking.experiment=refused"]  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != SHARED_STORAGE_ENV}
    known_actors = set(_trial_actors())

    refused = subprocess.run(command, cwd=workdir, env=environment, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert storage.as_uri() in refused.stderr and "--storage s3://" in refused.stderr
    assert "no node with CPUs or GPUs" in refused.stderr

    # storage declared shared: now the loopback tracking URI is refused
    environment[SHARED_STORAGE_ENV] = "1"
    refused = subprocess.run(command, cwd=workdir, env=environment, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert mlflow_server.uri in refused.stderr and "every node reaches" in refused.stderr
    assert not storage.exists() and set(_trial_actors()) == known_actors, "refused before any trial"


@pytest.mark.slow
def test_guards_read_real_ray_nodes(ray_cluster, mlflow_server, tmp_path, monkeypatch):
    import ray

    monkeypatch.delenv(SHARED_STORAGE_ENV, raising=False)
    nodes = ray.nodes()
    assert len([n for n in nodes if n["Alive"]]) == 3
    # three raylets, one machine: one disk, one loopback
    check_storage_for_cluster((tmp_path / "storage").as_uri(), nodes)
    check_tracking_for_cluster(mlflow_server.uri, nodes)
    # the same head seen before any worker joined: trials would run on machines yet to come
    head_only = [n for n in nodes if n["Resources"].get(HEAD_RESOURCE)]
    assert len(head_only) == 1 and "CPU" not in head_only[0]["Resources"]
    with pytest.raises(ClusterSetupError, match="no node with CPUs or GPUs"):
        check_storage_for_cluster((tmp_path / "storage").as_uri(), head_only)
    with pytest.raises(ClusterSetupError, match="every node reaches"):
        check_tracking_for_cluster(mlflow_server.uri, head_only)


@pytest.mark.slow
def test_trials_spread_over_workers_and_log_through_the_server(ray_cluster, mlflow_server, workdir):
    from ray import tune

    from fer_ray.sweep import main

    storage = workdir / "storage"
    known_actors = set(_trial_actors())
    code = main(_sweep_args(ray_cluster, mlflow_server, storage, "spread", "search.grid={train.lr: [0.003, 0.001]}", "search.seeds=[0]"))
    assert code == 0

    # two trials of one CPU each on two one-CPU workers: one ran on each
    new_actors = {aid: info for aid, info in _trial_actors().items() if aid not in known_actors}
    assert len(new_actors) == 2
    assert {info["Address"]["NodeID"] for info in new_actors.values()} == set(ray_cluster.workers())
    (experiment_dir,) = [path for path in storage.iterdir() if path.is_dir()]
    trials = tune.ExperimentAnalysis(str(experiment_dir)).trials
    assert [t.placement_group_factory.required_resources for t in trials] == [{"CPU": 1.0, "GPU": 0.5}] * 2

    parents, children = _runs(mlflow_server, "spread")
    assert len(parents) == 1 and len(children) == 2
    assert {run.data.tags["fer_ray.node_id"] for run in children} == set(ray_cluster.workers())
    client = mlflow.MlflowClient(mlflow_server.uri)
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), "artifacts go through the server"
        listed = {a.path for a in client.list_artifacts(run.info.run_id)} | {
            a.path for a in client.list_artifacts(run.info.run_id, "model")
        }
        assert {"model/MLmodel", "confusion_matrix.png"} <= listed
        stored = [p for p in mlflow_server.artifacts.rglob("model.pt") if run.info.run_id in p.parts]
        assert len(stored) == 1 and stored[0].stat().st_size > 0, "the server stored the trial's model file"
        assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 2
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")} >= {"report/report.md"}


@pytest.mark.slow
def test_lost_worker_node_retries_the_trial_from_its_checkpoint(ray_cluster, mlflow_server, workdir):
    from fer_ray.sweep import main

    epochs = 4
    args = _sweep_args(
        ray_cluster, mlflow_server, workdir / "storage", "node-loss",
        f"train.epochs={epochs}", "search.grid={train.lr: [0.001]}", "search.seeds=[0]", "failure.max_retries=2",
    )  # fmt: skip
    client = mlflow.MlflowClient(mlflow_server.uri)

    def second_epoch_logged() -> bool:
        children = _runs(mlflow_server, "node-loss")[1] if _experiment_exists(client, "node-loss") else []
        return bool(children) and any(m.step == 2 for m in client.get_metric_history(children[0].info.run_id, "train_loss"))

    known_actors = set(_trial_actors())
    outcome: dict[str, Any] = {}
    driver = threading.Thread(target=lambda: outcome.update(code=main(args)), daemon=True)
    driver.start()
    try:
        # epoch 2 logged: Tune has taken epoch 1's report and checkpoint (a trial blocks in report
        # until its result is fetched). With MLflow paused the trial cannot finish: lose its node now.
        _wait_for(second_epoch_logged, 240, "the trial's second epoch")
        with mlflow_server.paused():
            running = [i for aid, i in _trial_actors().items() if aid not in known_actors and i["State"] == "ALIVE"]
            assert len(running) == 1
            lost_node = running[0]["Address"]["NodeID"]
            # a hard kill (SIGKILL of the node's raylet; its workers exit at once), as when a machine is lost
            ray_cluster.cluster.remove_node(ray_cluster.workers()[lost_node], allow_graceful=False)
            time.sleep(1.0)
            # every metric the lost attempt logged carries an earlier time (MLflow keeps the client's
            # timestamp); the retry starts only once Ray has noticed the node is gone (seconds later)
            killed_at_ms = int(time.time() * 1000)
    finally:
        driver.join(timeout=300)  # also after a failed assertion: the sweep must not outlive the test
    assert not driver.is_alive(), "the sweep did not finish after the node was lost"
    assert outcome.get("code") == 0

    parents, children = _runs(mlflow_server, "node-loss")
    assert len(parents) == 1 and len(children) == 1, "the retried trial is recorded once"
    run = children[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["fer_ray.attempts"] == "2"
    attempts = [i for aid, i in _trial_actors().items() if aid not in known_actors]
    assert len(attempts) == 2 and attempts[0]["Address"]["NodeID"] != attempts[1]["Address"]["NodeID"]
    assert run.data.tags["fer_ray.node_id"] in set(ray_cluster.workers()) - {lost_node}
    history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: (m.timestamp, m.step))
    steps = [m.step for m in history]
    # resumed, not restarted: the first attempt logged epochs 1..k (k >= 2: the node was lost after
    # epoch 2 was logged), the retry continues after its last checkpoint (epoch 1 or later), once each
    first = [m.step for m in history if m.timestamp < killed_at_ms]
    retry = [m.step for m in history if m.timestamp >= killed_at_ms]
    assert first == list(range(1, len(first) + 1)) and len(first) >= 2, f"steps {steps}"
    assert retry and retry == list(range(retry[0], epochs + 1)), f"the retry did not run each remaining epoch once: {steps}"
    assert 2 <= retry[0] <= len(first) + 1, f"the retry restarted instead of continuing from its checkpoint: {steps}"
    assert steps.count(1) == 1, f"epoch 1 ran again after the node loss: steps {steps}"
    assert 0 <= run.data.metrics["test_acc"] <= 1


@pytest.mark.slow
def test_killed_driver_resumes_on_the_cluster_without_duplicate_runs(ray_cluster, mlflow_server, workdir):
    from fer_ray.sweep import main

    experiment = "driver-kill"
    sweep = _sweep_args(
        ray_cluster, mlflow_server, workdir / "storage", experiment,
        "search.grid={train.lr: [0.001]}", "search.seeds=[0, 1]", "search.max_concurrent=1",
    )  # fmt: skip
    client = mlflow.MlflowClient(mlflow_server.uri)

    def one_trial_finished() -> bool:
        children = _runs(mlflow_server, experiment)[1] if _experiment_exists(client, experiment) else []
        return any(r.info.status == "FINISHED" for r in children)

    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(workdir / "driver.log", "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "fer_ray.sweep", *sweep], cwd=workdir, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_for(one_trial_finished, 300, "a finished trial")
        with mlflow_server.paused():  # the second trial cannot finish meanwhile
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    parents, children = _runs(mlflow_server, experiment)
    assert [p.info.status for p in parents] == ["RUNNING"], "a SIGKILLed driver leaves its parent run open"
    (done,) = [c for c in children if c.info.status == "FINISHED"]  # the kill came between the two trials
    done_history = {key: client.get_metric_history(done.info.run_id, key) for key in ("train_loss", "val_acc", "test_acc")}

    assert main([*sweep, "--resume"]) == 0  # a new driver, in this process, on the same cluster
    parents, children = _runs(mlflow_server, experiment)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert len(children) == 2, "two seeds, each recorded once"
    assert len({c.data.tags["fer_ray.trial_key"] for c in children}) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    # the trial that had finished before the kill did not run again: one attempt, its history untouched
    (after,) = [c for c in children if c.info.run_id == done.info.run_id]
    assert after.data.tags["fer_ray.attempts"] == "1"
    assert after.info.end_time == done.info.end_time
    for key, history in done_history.items():
        steps = [m.step for m in client.get_metric_history(done.info.run_id, key)]
        assert len(steps) == len(set(steps)) == len(history), f"{key} logged again: steps {steps}"
    assert sorted(m.step for m in done_history["val_acc"]) == [1, 2]


@pytest.mark.slow
def test_unreachable_server_fails_before_any_trial(ray_cluster, workdir, capsys):
    from fer_ray.sweep import main

    uri = f"http://127.0.0.1:{free_port()}"
    storage = workdir / "storage"
    known_actors = set(_trial_actors())
    code = main(
        [str(QUICKSTART), "--address", ray_cluster.address, "--tracking-uri", uri, "--storage", storage.as_uri(), "--set", *CLUSTER_SWEEP]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert uri in err and "unreachable" in err
    assert not storage.exists(), "no Tune experiment folder"
    assert set(_trial_actors()) == known_actors, "no trial started"
