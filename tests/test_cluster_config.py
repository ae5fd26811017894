"""cluster.yaml (AWS) and cluster-local.yaml (on-premise) against Ray's own offline validation.

``ray up`` first runs ``prepare_config`` (merge with the provider's defaults.yaml, setup commands,
docker and worker-count checks) and ``validate_config`` (Ray's JSON schema); both run offline, also for
AWS. Only the provider bootstrap that follows (IAM profile, key pair, subnets, security group, AMI)
talks to AWS, and it is not run here. Plus the project's own rules: head without trial resources,
autoscaled spot GPU workers, pinned versions, the MLflow server on the head, no credentials, no port
open to the internet.
"""

from __future__ import annotations

import copy
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent
AWS = REPO / "cluster.yaml"
LOCAL = REPO / "cluster-local.yaml"
PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"  # the project's Python (3.11)


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (dotted key path, value) of a parsed YAML document, keys included as values of ''."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{path}.{key}" if path else str(key), value
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield f"{path}[{index}]", value
            yield from _walk(value, f"{path}[{index}]")


def _validate(config: dict[str, Any]) -> dict[str, Any]:
    prepared = prepare_config(config)
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_configs_pass_rays_offline_validation(path):
    prepared = _validate(_load(path))
    assert prepared["provider"]["type"] == ("aws" if path == AWS else "local")
    # prepare_config merged the common setup commands into the per-role lists ray up runs
    assert any("-e ~/fer_ray" in command for command in prepared["worker_setup_commands"])


@pytest.mark.parametrize(
    ("path", "break_it", "message"),
    [
        (AWS, lambda c: c.update(max_wrokers=4), "'max_wrokers' was unexpected"),
        (AWS, lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1), "'min_worker' was unexpected"),
        (AWS, lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "0.5 is not of type 'integer'"),
        (LOCAL, lambda c: c.update(worker_start_commands=["ray start"]), "'worker_start_commands' was unexpected"),
    ],
    ids=["aws-unknown-key", "aws-unknown-node-type-key", "aws-fractional-gpu", "local-unknown-key"],
)
def test_broken_copies_fail_validation(path, break_it, message):
    config = copy.deepcopy(_load(path))
    break_it(config)
    with pytest.raises(jsonschema.ValidationError) as error:
        _validate(config)
    assert message in error.value.message


def test_head_runs_no_trials_and_workers_are_autoscaled_spot_gpus():
    config = _load(AWS)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert len(workers) == 1
    worker = workers[0]
    assert worker["min_workers"] == 0 and 1 <= worker["max_workers"] <= config["max_workers"]
    assert worker["resources"]["GPU"] == 1 and isinstance(worker["resources"]["GPU"], int)
    assert worker["node_config"]["InstanceType"] == "g5.xlarge"
    assert worker["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"

    local = _load(LOCAL)
    head_start = " ".join(local["head_start_ray_commands"])
    assert "ray start --head" in head_start and "--num-cpus=0" in head_start
    assert set(local["provider"]) >= {"head_ip", "worker_ips"}


def test_ray_and_python_pinned_to_the_project_and_package_from_file_mounts():
    config, local = _load(AWS), _load(LOCAL)
    pinned = f"{ray.__version__}-{PYTHON_TAG}"
    assert config["docker"]["image"].endswith(f"{pinned}-gpu")
    assert config["docker"]["head_image"].endswith(f"{pinned}-cpu")
    assert f"ray[default,tune]=={ray.__version__}" in " ".join(local["setup_commands"])
    for cfg in (config, local):
        assert cfg["file_mounts"] == {"~/fer_ray": "."}
        assert ".gitignore" in cfg["rsync_filter"]  # .venv, caches and results stay behind
        setup = " ".join(cfg["setup_commands"])
        assert "pip install" in setup and "-e ~/fer_ray" in setup
        version_check = f"ray.__version__ == '{ray.__version__}' and sys.version_info[:2] == {sys.version_info[:2]}"
        assert version_check in setup


@pytest.mark.parametrize(("path", "artifacts"), [(AWS, "s3://"), (LOCAL, "/mnt/fer_ray/")], ids=["aws", "local"])
def test_head_starts_the_mlflow_server_reachable_from_the_cluster_only(path, artifacts):
    config = _load(path)
    server = [command for command in config["head_start_ray_commands"] if "mlflow server" in command]
    assert len(server) == 1
    assert re.search(r"--backend-store-uri sqlite:///\S+\.db", server[0])
    assert f"--artifacts-destination {artifacts}" in server[0]
    assert "--port 5000" in server[0]
    host = re.search(r"--host (\S+)", server[0]).group(1)
    assert host in ("0.0.0.0", "$(hostname")  # all interfaces (AWS: behind the security group) / the LAN address
    assert not any("mlflow" in command for command in config["worker_start_ray_commands"])
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


_SECRET_KEY = re.compile(r"secret|passw|token|access_key|private_key|credential|api_key", re.IGNORECASE)
_SECRET_VALUE = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"://[^/\s:@]+:[^/\s@]+@"),  # user:password@host in a URI
    re.compile(r"(aws_secret_access_key|aws_session_token)\s*[=:]", re.IGNORECASE),
]


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_no_credentials_in_the_file(path):
    text = path.read_text()
    for pattern in _SECRET_VALUE:  # the whole text, comments included
        assert not pattern.search(text), f"{path.name}: looks like a credential: {pattern.pattern}"
    for key_path, value in _walk(_load(path)):
        assert not _SECRET_KEY.search(key_path.rsplit(".", 1)[-1]), f"{path.name}: credential-like key {key_path}"
        assert not (isinstance(value, str) and _SECRET_KEY.search(value) and "=" in value), f"{key_path}: {value!r}"


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_no_port_opened_to_the_internet(path):
    config = _load(path)
    for key_path, value in _walk(config):
        if isinstance(value, str):
            assert "0.0.0.0/0" not in value and "::/0" not in value, f"{path.name}: {key_path} opens {value!r}"
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    open_cidrs = [r for rule in rules for r in rule.get("IpRanges", []) + rule.get("Ipv6Ranges", [])]
    assert open_cidrs == []
