"""cluster.yaml (AWS) and cluster-local.yaml (on-premise) against Ray's own offline validation.

``ray up`` first runs ``prepare_config`` (merge with the provider's defaults.yaml, setup commands,
docker and worker-count checks) and ``validate_config`` (Ray's JSON schema); both run offline, also for
AWS. Only the provider bootstrap that follows (IAM profile, key pair, subnets, security group, AMI)
talks to AWS, and it is not run here. Plus the project's own rules: head without trial resources,
autoscaled spot GPU workers, pinned versions, the MLflow server on the head, no credentials, no port
open to the internet, and the security properties of issue 13: each is a check that returns the
problems it finds, run on the shipped file (none) and on a copy with the weakness put back (found).
"""

from __future__ import annotations

import copy
import json
import re
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
CLUSTER_PYTHON = (3, 11)  # the cluster's Python (Ray's py311 images), whichever Python runs the tests
PYTHON_TAG = "py{}{}".format(*CLUSTER_PYTHON)
DOCS = REPO / "docs" / "cluster.md"


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
        assert cfg["file_mounts"]["~/fer_ray"] == "."
        assert ".gitignore" in cfg["rsync_filter"]  # .venv, caches and results stay behind
        setup = " ".join(cfg["setup_commands"])
        assert "pip install" in setup and "-e ~/fer_ray" in setup
        version_check = f"ray.__version__ == '{ray.__version__}' and sys.version_info[:2] == {CLUSTER_PYTHON}"
        assert version_check in setup


@pytest.mark.parametrize(("path", "artifacts"), [(AWS, "s3://"), (LOCAL, "/mnt/fer_ray/")], ids=["aws", "local"])
def test_head_starts_the_mlflow_server_reachable_from_the_cluster_only(path, artifacts):
    config = _load(path)
    server = [command for command in config["head_start_ray_commands"] if "mlflow server" in command]
    assert len(server) == 1
    assert re.search(r"--backend-store-uri sqlite:///\S+\.db", server[0])
    assert f"--artifacts-destination {artifacts}" in server[0]
    assert "--port 5000" in server[0]
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
_ASSIGNMENT = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
# names of settings that say where a secret is or how it is used, never the secret itself
_REFERENCE_NAME = re.compile(r"(_PATH|_FILE|_MODE)$")


def _credential_problems(config: dict[str, Any]) -> list[str]:
    """Secrets written into the config: a secret-named key holding a literal (a file mount of a token
    file, path to path, is a reference), or a secret-named shell variable set to a literal."""
    problems = []
    for key_path, value in _walk(config):
        key = key_path.rsplit(".", 1)[-1]
        is_file_mount = key_path.startswith("file_mounts.") and isinstance(value, str) and value.startswith(("~/", "/"))
        if _SECRET_KEY.search(key) and not is_file_mount:
            problems.append(f"credential-like key {key_path}")
        for name, literal in _ASSIGNMENT.findall(value) if isinstance(value, str) else []:
            if _SECRET_KEY.search(name) and not _REFERENCE_NAME.search(name) and not literal.startswith("$"):
                problems.append(f"{key_path}: {name} set to a literal")
    return problems


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_no_credentials_in_the_file(path):
    text = path.read_text()
    for pattern in _SECRET_VALUE:  # the whole text, comments included
        assert not pattern.search(text), f"{path.name}: looks like a credential: {pattern.pattern}"
    assert _credential_problems(_load(path)) == []


@pytest.mark.parametrize(
    "weaken",
    [
        lambda c: c["head_start_ray_commands"].insert(0, "export RAY_AUTH_TOKEN=3f2a9c0d41b84e7f"),
        lambda c: c.setdefault("auth", {}).update(aws_secret_token="3f2a9c0d41b84e7f"),
    ],
    ids=["token-in-a-command", "secret-key"],
)
def test_a_written_down_token_is_found(weaken):
    config = copy.deepcopy(_load(AWS))
    weaken(config)
    assert _credential_problems(config)


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_no_port_opened_to_the_internet(path):
    config = _load(path)
    for key_path, value in _walk(config):
        if isinstance(value, str):
            assert "0.0.0.0/0" not in value and "::/0" not in value, f"{path.name}: {key_path} opens {value!r}"
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    open_cidrs = [r for rule in rules for r in rule.get("IpRanges", []) + rule.get("Ipv6Ranges", [])]
    assert open_cidrs == []


# --- security (issue 13): each check returns what it finds wrong ---------------------------------

RAY_DEFAULT_PROFILE = "ray-autoscaler-v1"  # Ray's default: AmazonEC2FullAccess + AmazonS3FullAccess
_AUTH_ENV = re.compile(r"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=(\$HOME/[A-Za-z0-9_./-]+)")


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def _profile(node_type: dict[str, Any]) -> str | None:
    profile = node_type["node_config"].get("IamInstanceProfile")
    return None if profile is None else profile.get("Name") or profile["Arn"].rsplit("/", 1)[-1]


def _iam_problems(config: dict[str, Any]) -> list[str]:
    """Ray's AWS bootstrap (_configure_iam_role) gives its default profile to the head only, and only when
    the head's node_config names none; a worker's node_config goes to create_instances as written, so a
    worker without a profile of its own gets no S3 access and one naming the default gets the head's powers."""
    head = config["available_node_types"][config["head_node_type"]]
    head_profile = _profile(head) or RAY_DEFAULT_PROFILE
    problems = []
    for name, worker in _worker_types(config).items():
        profile = _profile(worker)
        if profile is None:
            problems.append(f"{name}: no instance profile of its own")
        elif profile in (RAY_DEFAULT_PROFILE, head_profile):
            problems.append(f"{name}: the head's / Ray's default profile {profile!r}")
    return problems


def _token_auth_problems(config: dict[str, Any]) -> list[str]:
    """RAY_AUTH_MODE=token and the token file on every `ray start` (workers do not turn it on by themselves,
    unlike `ray start --head`), in ~/.bashrc for the driver's shell, and the file copied to every node."""
    problems = []
    token_paths = set()
    for role, commands, start in (
        ("head", config["head_start_ray_commands"], "ray start --head"),
        ("worker", config["worker_start_ray_commands"], "ray start --address"),
    ):
        starts = [c for c in commands if start in c]
        if len(starts) != 1 or not (env := _AUTH_ENV.search(starts[0])) or env.start() > starts[0].index(start):
            problems.append(f"{role}: `{start}` without RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH before it")
        else:
            token_paths.add(env.group(1))
    bashrc = [c for c in config["setup_commands"] if "~/.bashrc" in c and _AUTH_ENV.search(c)]
    if not bashrc:
        problems.append("the driver's shell (~/.bashrc) does not get RAY_AUTH_MODE=token")
    else:
        token_paths.add(_AUTH_ENV.search(bashrc[0]).group(1))
    if len(token_paths) != 1:
        problems.append(f"different token paths: {sorted(token_paths)}")
    for token_path in token_paths:
        mounted = config["file_mounts"].get(token_path.replace("$HOME/", "~/"))
        if mounted != "~/.ray/auth_token":
            problems.append(f"{token_path} is not copied from your ~/.ray/auth_token (file_mounts: {mounted!r})")
    return problems


def _mlflow_problems(config: dict[str, Any]) -> list[str]:
    """The tracking server listens on the head's private address (the cluster network, not every
    interface), or asks for a login (MLflow's basic-auth app)."""
    server = [c for c in config["head_start_ray_commands"] if "mlflow server" in c]
    if len(server) != 1:
        return [f"{len(server)} mlflow server commands on the head"]
    if "--app-name basic-auth" in server[0]:
        return []
    host = re.search(r"--host (\$\(hostname -I \| cut -d' ' -f1\)|\S+)", server[0])
    if host is None or host.group(1) != "$(hostname -I | cut -d' ' -f1)":
        return [
            f"mlflow server without a login on {host.group(1) if host else '(default host)'}: bind it to $(hostname -I | cut -d' ' -f1)"
        ]
    return []


def _ssh_problems(config: dict[str, Any]) -> list[str]:
    """Every AWS node type in the user's own security group: for a node type without SecurityGroupIds,
    Ray's bootstrap (_configure_security_group) creates or reuses its default group, whose rules it
    writes with SSH from 0.0.0.0/0 (_create_default_ssh_inbound_rules) next to any of provider.security_group."""
    problems = [
        f"{name}: no SecurityGroupIds, so Ray's default group (SSH from 0.0.0.0/0)"
        for name, node_type in config["available_node_types"].items()
        if not node_type["node_config"].get("SecurityGroupIds")
    ]
    groups = {tuple(t["node_config"].get("SecurityGroupIds", ())) for t in config["available_node_types"].values()}
    if len(groups) > 1:
        problems.append(f"head and workers in different groups {sorted(groups)}: they must reach each other")
    return problems


def _documented_ingress_rules() -> list[str]:
    """The `aws ec2 authorize-security-group-ingress` commands docs/cluster.md gives for sg-YOUR-GROUP."""
    return re.findall(r"^aws ec2 authorize-security-group-ingress .*$", DOCS.read_text(), re.MULTILINE)


def test_workers_get_their_own_minimal_instance_profile():
    config = _load(AWS)
    assert _iam_problems(config) == []
    assert _profile(config["available_node_types"]["gpu_worker"]) == "fer-ray-worker"
    docs = DOCS.read_text()
    policy = json.loads(re.search(r"```json\n(.*?)```", docs, re.DOTALL).group(1))
    actions = {a for statement in policy["Statement"] for a in statement["Action"]}
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert actions == {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"}
    assert resources == {"arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*"}, "this bucket only"
    assert "iam:PassRole" in docs and "role/fer-ray-worker" in docs, "the head may hand the worker role on"


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_ray_token_authentication_on_every_node_and_for_the_driver(path):
    assert _token_auth_problems(_load(path)) == []
    assert "ray get-auth-token --generate" in path.read_text()


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_mlflow_server_listens_on_the_cluster_network_only(path):
    assert _mlflow_problems(_load(path)) == []


def test_ssh_only_from_the_users_cidr():
    config = _load(AWS)
    assert _ssh_problems(config) == []
    assert config["provider"].get("security_group") is None, "Ray ignores it once every node type names a group"
    rules = _documented_ingress_rules()
    ssh = [rule for rule in rules if "--port 22" in rule]
    assert len(ssh) == 1 and '--cidr "$MY_CIDR"' in ssh[0], ssh
    assert all("0.0.0.0/0" not in rule and "::/0" not in rule for rule in rules), rules
    inside = [rule for rule in rules if "UserIdGroupPairs=[{GroupId=$SG}]" in rule]
    assert len(inside) == 1 and len(rules) == 2, "SSH from your range, the rest from the group itself"


def _set_worker_profile(config: dict[str, Any], name: str | None) -> None:
    node_config = config["available_node_types"]["gpu_worker"]["node_config"]
    if name is None:
        node_config.pop("IamInstanceProfile")
    else:
        node_config["IamInstanceProfile"] = {"Name": name}


def _drop_auth_env(commands: list[str], start: str) -> None:
    commands[:] = [_AUTH_ENV.sub("RAY_AUTH_MODE=disabled", c) if start in c else c for c in commands]


def _set_mlflow_host(config: dict[str, Any], host: str) -> None:
    config["head_start_ray_commands"] = [
        c.replace("--host $(hostname -I | cut -d' ' -f1)", f"--host {host}") for c in config["head_start_ray_commands"]
    ]


@pytest.mark.parametrize(
    ("path", "check", "weaken"),
    [
        (AWS, _iam_problems, lambda c: _set_worker_profile(c, RAY_DEFAULT_PROFILE)),
        (AWS, _iam_problems, lambda c: _set_worker_profile(c, None)),
        (AWS, _token_auth_problems, lambda c: _drop_auth_env(c["head_start_ray_commands"], "ray start --head")),
        (AWS, _token_auth_problems, lambda c: _drop_auth_env(c["worker_start_ray_commands"], "ray start --address")),
        (LOCAL, _token_auth_problems, lambda c: _drop_auth_env(c["worker_start_ray_commands"], "ray start --address")),
        (LOCAL, _token_auth_problems, lambda c: c.update(setup_commands=[x for x in c["setup_commands"] if "RAY_AUTH" not in x])),
        (AWS, _token_auth_problems, lambda c: c["file_mounts"].pop("~/ray_auth_token")),
        (AWS, _mlflow_problems, lambda c: _set_mlflow_host(c, "0.0.0.0")),
        (LOCAL, _mlflow_problems, lambda c: _set_mlflow_host(c, "0.0.0.0")),
        (AWS, _mlflow_problems, lambda c: _set_mlflow_host(c, "::")),
        (AWS, _ssh_problems, lambda c: c["available_node_types"]["gpu_worker"]["node_config"].pop("SecurityGroupIds")),
        (AWS, _ssh_problems, lambda c: c["available_node_types"]["head"]["node_config"].update(SecurityGroupIds=["sg-other"])),
    ],
    ids=[
        "worker-default-profile",
        "worker-no-profile",
        "head-no-token",
        "worker-no-token",
        "local-worker-no-token",
        "driver-no-token",
        "token-not-copied",
        "mlflow-all-interfaces",
        "local-mlflow-all-interfaces",
        "mlflow-all-ipv6",
        "worker-default-security-group",
        "head-other-group",
    ],
)
def test_each_check_finds_the_weakness_put_back(path, check, weaken):
    config = copy.deepcopy(_load(path))
    assert check(config) == []
    weaken(config)
    assert check(config), "the check did not notice"
    _validate(config)  # still a config Ray accepts: only the project's check stands in the way


def test_mlflow_on_all_interfaces_is_accepted_behind_basic_auth():
    config = copy.deepcopy(_load(AWS))
    _set_mlflow_host(config, "0.0.0.0")
    config["head_start_ray_commands"] = [
        c.replace("mlflow server", "mlflow server --app-name basic-auth") for c in config["head_start_ray_commands"]
    ]
    assert _mlflow_problems(config) == []
