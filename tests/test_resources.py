"""Resources per trial: ``gpu: auto`` sized by model and image size, resolved on real Ray clusters (a
plain CPU Ray, and ``ray.cluster_utils.Cluster`` nodes declaring a fake GPU: no CUDA needed), and a
request no node can meet refused before any trial or MLflow run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from conftest import TINY
from fer_ray.orchestrate.resources import (
    TAG_RESOURCES,
    ClusterCapacity,
    NodeShape,
    ResourcesUnavailable,
    autoscaler_node_types,
    capacity_from_nodes,
    concurrent_trials,
    gpu_share,
    local_capacity,
    ray_capacity,
    read_bootstrap_config,
    resolve_resources,
)
from fer_ray.orchestrate.spec import SpecError, load_spec, resolve_spec

REPO = Path(__file__).resolve().parent.parent
SWEEPS = REPO / "sweeps"
QUICKSTART = SWEEPS / "quickstart.yaml"

CPU_ONLY = ClusterCapacity((NodeShape("10.0.0.1", 8, 0),))
ONE_GPU = ClusterCapacity((NodeShape("10.0.0.1", 8, 1),))


def _spec(*overrides: str):
    return resolve_spec({"name": "r", "experiment": "finetune"}, list(overrides))


# ------------------------------------------------------------------------------------ the rule


def test_every_shipped_sweep_defaults_to_auto():
    for path in sorted(SWEEPS.glob("*.yaml")):
        assert load_spec(path).resources.gpu == "auto", path.name
    assert _spec().resources.gpu == "auto"


@pytest.mark.parametrize(
    ("overrides", "share"),
    [
        ((), 0.25),  # the quickstart itself
        (("model.arch=resnet50", "data.image_size=224"), 1.0),  # the reference study's scale
        (("model.arch=resnet18", "data.image_size=224"), 0.5),  # 0.44 x ResNet-50 at 224 px
        (("model.arch=resnet50", "data.image_size=128"), 0.5),  # 0.33
        (("model.arch=resnet18", "data.image_size=112"), 0.25),  # 0.11
        (("model.arch=resnet152", "data.image_size=224"), 1.0),  # auto never asks more than one
        (("search.grid={model.arch: [resnet18, resnet152]}", "data.image_size=128"), 1.0),  # the largest arch decides
    ],
)
def test_gpu_share_follows_model_and_image_size(overrides, share):
    spec = load_spec(QUICKSTART, list(overrides))
    assert gpu_share(spec)[0] == share
    resolved = resolve_resources(spec, ONE_GPU)
    assert (resolved.cpu, resolved.gpu) == (1.0, share)
    assert f"-> {share:g} GPU" in resolved.reason


def test_four_quickstart_trials_share_one_gpu():
    spec = load_spec(QUICKSTART)
    resolved = resolve_resources(spec, ONE_GPU)
    assert resolved.gpu == 0.25 and concurrent_trials(resolved, ONE_GPU) == 4
    assert "resnet18 at 40 px" in resolved.describe()


def test_auto_is_cpu_without_gpus_and_explicit_numbers_are_kept():
    auto = resolve_resources(_spec(), CPU_ONLY)
    assert (auto.cpu, auto.gpu) == (1.0, 0.0) and "no GPU" in auto.reason
    assert concurrent_trials(auto, CPU_ONLY) == 8
    for gpu in (0, 0.5, 1):
        assert resolve_resources(_spec(f"resources.gpu={gpu}"), ONE_GPU).gpu == gpu
    assert resolve_resources(_spec("resources.gpu=0", "resources.cpu=2"), CPU_ONLY).for_tune() == {"cpu": 2.0, "gpu": 0.0}


def test_bad_gpu_values_name_the_key():
    for value, text in (("-1", "got -1"), ("many", "got 'many'"), ("1.5", "whole number")):
        with pytest.raises(SpecError, match="resources") as error:
            _spec(f"resources.gpu={value}")
        assert text in str(error.value)


def test_a_request_no_node_meets_says_what_exists():
    with pytest.raises(ResourcesUnavailable) as error:
        resolve_resources(_spec("resources.gpu=2"), ONE_GPU)
    message = str(error.value)
    assert "asks 1 CPU and 2 GPU per trial" in message and "the cluster has 1 GPUs" in message
    assert "10.0.0.1: 8 CPU, 1 GPU" in message and "no autoscaler" in message
    # CPUs and GPUs must be on one node: a GPU node with 1 CPU cannot take a 4-CPU GPU trial
    split = ClusterCapacity((NodeShape("a", 8, 0), NodeShape("b", 1, 1)))
    with pytest.raises(ResourcesUnavailable):
        resolve_resources(_spec("resources.gpu=1", "resources.cpu=4"), split)
    assert issubclass(ResourcesUnavailable, SpecError)  # the CLI's exit code 2


# ------------------------------------------------------------------------- autoscaled clusters


def test_autoscaler_node_types_of_the_shipped_cluster_file(tmp_path):
    """cluster.yaml: a CPU-less head alone at first, GPU workers added by the autoscaler. As the
    driver on its head sees it (the file ray up leaves at ~/ray_bootstrap_config.yaml)."""
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text((REPO / "cluster.yaml").read_text())
    types = autoscaler_node_types(read_bootstrap_config(bootstrap))
    assert types == (NodeShape("gpu_worker (autoscaled)", 4.0, 1.0),)
    head_only = capacity_from_nodes([{"Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"memory": 1.0}}], types)
    assert resolve_resources(load_spec(QUICKSTART), head_only).gpu == 0.25, "auto counts on the GPU workers to come"
    with pytest.raises(ResourcesUnavailable) as error:
        resolve_resources(_spec("resources.gpu=2"), head_only)
    assert "autoscaler may add: gpu_worker (autoscaled): 4 CPU, 1 GPU" in str(error.value)
    # a node type that states no resources is neither counted on nor refused
    vague = {"head_node_type": "h", "available_node_types": {"h": {"resources": {}}, "w": {"max_workers": 2}}}
    unknown = capacity_from_nodes([], autoscaler_node_types(vague))
    assert resolve_resources(_spec(), unknown).gpu == 0.0
    assert resolve_resources(_spec("resources.gpu=4"), unknown).gpu == 4.0
    off = {"available_node_types": {"w": {"max_workers": 0, "resources": {"GPU": 1}}}}
    assert autoscaler_node_types(off) == ()
    assert read_bootstrap_config(tmp_path / "absent.yaml") is None


def test_local_capacity_is_this_machine(tmp_path):
    capacity = local_capacity(num_cpus=3, bootstrap_config=tmp_path / "absent.yaml")
    assert capacity.nodes[0].cpu == 3.0 and capacity.node_types == ()


# ------------------------------------------------------------------------------------ real Ray


@pytest.fixture()
def fresh_ray():
    import ray

    ray.shutdown()
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_plain_cpu_ray_gets_gpu_0(fresh_ray, tmp_path):
    fresh_ray.init(address="local", num_cpus=2, include_dashboard=False)
    capacity = ray_capacity(bootstrap_config=tmp_path / "absent.yaml")
    resolved = resolve_resources(load_spec(QUICKSTART), capacity)
    assert (resolved.cpu, resolved.gpu) == (1.0, 0.0) and concurrent_trials(resolved, capacity) == 2
    with pytest.raises(ResourcesUnavailable, match="the cluster has 0 GPUs"):
        resolve_resources(_spec("resources.gpu=2"), capacity)


@pytest.mark.slow
def test_fake_gpu_node_gets_shares_and_trials_record_them(fresh_ray, tmp_path, monkeypatch):
    """A head node declaring one (fake) GPU: auto gives the quickstart a quarter of it, ResNet-50 at
    224 px the whole; a sweep under auto runs its trials on that GPU and tags the runs."""
    from ray.cluster_utils import Cluster

    from fer_ray.sweep import main

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    try:
        fresh_ray.init(address=cluster.address)
        capacity = ray_capacity(bootstrap_config=tmp_path / "absent.yaml")
        assert capacity.gpus == 1 and capacity.has_gpus
        assert resolve_resources(load_spec(QUICKSTART), capacity).gpu == 0.25
        assert resolve_resources(load_spec(QUICKSTART, ["model.arch=resnet50", "data.image_size=224"]), capacity).gpu == 1.0

        monkeypatch.chdir(tmp_path)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        code = main([str(QUICKSTART), "--address", cluster.address, "--tracking-uri", uri,
                     "--set", *TINY, "search.seeds=[0]", "train.epochs=1"])  # fmt: skip
        assert code == 0
        runs = _runs(uri)
        assert len(runs) == 3 and set(runs[TAG_COLUMN]) == {"cpu=1 gpu=0.25"}, "parent and both trials"
        children = runs[runs["tags.fer_ray.role"] == "child"]
        assert set(children["tags.fer_ray.gpu_ids"]) == {"0"}, "each trial was given the (fake) GPU"
    finally:
        fresh_ray.shutdown()
        cluster.shutdown()


TAG_COLUMN = f"tags.{TAG_RESOURCES}"


def _runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True)


@pytest.mark.slow
def test_cli_refuses_gpus_a_cpu_ray_lacks_before_any_trial(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "ray_results"
    command = [sys.executable, "-m", "fer_ray.sweep", str(QUICKSTART), "--num-cpus", "2", "--tracking-uri", uri,
               "--storage", str(storage), "--set", *TINY, "resources.gpu=2"]  # fmt: skip
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "asks 1 CPU and 2 GPU per trial (as set)" in refused.stderr
    assert "the cluster has 0 GPUs (nodes: " in refused.stderr and ": 2 CPU, 0 GPU" in refused.stderr
    assert not storage.exists(), "no Tune folder"
    assert _runs(uri).empty, "no MLflow run"
    dry = subprocess.run([*command, "--dry-run"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 2 and "asks 1 CPU and 2 GPU per trial" in dry.stderr
