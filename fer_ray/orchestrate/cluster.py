"""Guards for a sweep whose trials run on several machines: storage and tracking every node reaches.

On one machine a local folder and ``sqlite:///mlflow.db`` are fine: every trial process sees the same
disk. Once the Ray cluster spans machines they are not: a trial on a worker writes its checkpoints to
the worker's own disk (the driver and a retry on another node cannot read them), and a worker logging
to ``sqlite:///...`` or ``http://127.0.0.1:5000`` reaches its *own* machine, not the head. The driver
calls these checks right after connecting to Ray, so a misconfigured sweep fails before any trial
starts, with a message saying what to set.

A cluster "spans machines" when its alive nodes have more than one address (``NodeManagerAddress``;
several raylets on one host, as ``ray.cluster_utils.Cluster`` starts them, share a disk), or when no
alive node offers a CPU or GPU: the head of cluster.yaml has ``CPU: 0``, so its trials will run on
worker machines the autoscaler has yet to add. Workers the autoscaler adds *after* the check are not
seen; a head that offers CPUs and autoscales workers later is therefore not caught.

Storage accepted on a multi-machine cluster: any URI with a scheme other than ``file`` (``s3://``,
``gs://``, ``abfs://``, ...); a local path or ``file://`` URI whose folder lies on a network
filesystem (NFS, CIFS, Lustre, ... read from ``/proc/self/mounts`` on the driver's machine); or any
local path when ``FER_RAY_SHARED_STORAGE=1`` declares it mounted at the same path on every node.
Tracking accepted: a server or database every node reaches (``http(s)://<head private IP>:5000``,
``postgresql://...@<db host>/...``); refused: sqlite files and loopback hosts.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fer_ray.orchestrate.spec import SpecError

#: Set to 1 (or true/yes) to declare a local storage path a shared mount present on every node.
SHARED_STORAGE_ENV = "FER_RAY_SHARED_STORAGE"
#: Filesystem types (as in /proc/self/mounts) that one machine shares with others.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "fuse.glusterfs", "ceph",
    "fuse.ceph", "fuse.cephfs", "beegfs", "gpfs", "fuse.sshfs", "fuse.s3fs", "fuse.juicefs",
    "fuse.gcsfuse", "fuse.mountpoint-s3", "fuse.goofys", "wekafs", "fuse.weka",
})  # fmt: skip
#: Ray's own resource that marks the head node in ``ray.nodes()``.
HEAD_RESOURCE = "node:__internal_head__"
MOUNTS_FILE = Path("/proc/self/mounts")
_TRUE = {"1", "true", "yes", "on"}
#: /proc/mounts writes space, tab, newline and backslash in mount points as octal escapes (\040).
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class ClusterSetupError(SpecError):
    """Storage or tracking that the nodes of a multi-machine Ray cluster cannot all reach.

    A SpecError: the fix is a value of the sweep (``--storage`` / ``--tracking-uri``), so the CLI
    answers it like any other spec problem (exit code 2)."""


# ------------------------------------------------------------------------------------ the cluster


def alive_nodes(nodes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The nodes of ``ray.nodes()`` that are alive."""
    return [node for node in nodes if node.get("Alive", node.get("alive", False))]


def node_addresses(nodes: Sequence[Mapping[str, Any]]) -> list[str]:
    """Distinct addresses (``NodeManagerAddress``) of the alive nodes, sorted."""
    return sorted({str(node.get("NodeManagerAddress", "")) for node in alive_nodes(nodes)})


def can_run_trials(node: Mapping[str, Any]) -> bool:
    """Whether the node offers a CPU or a GPU (the head of cluster.yaml offers neither)."""
    resources = node.get("Resources") or {}
    return resources.get("CPU", 0) > 0 or resources.get("GPU", 0) > 0


def spans_machines(nodes: Sequence[Mapping[str, Any]]) -> bool:
    """True when trials may run on another machine than the driver's (see the module docstring)."""
    alive = alive_nodes(nodes)
    return len(node_addresses(alive)) > 1 or not any(can_run_trials(node) for node in alive)


def head_address(nodes: Sequence[Mapping[str, Any]]) -> str | None:
    """The head node's address, if ``nodes`` holds it."""
    for node in alive_nodes(nodes):
        if (node.get("Resources") or {}).get(HEAD_RESOURCE):
            return str(node.get("NodeManagerAddress"))
    return None


def _cluster_shape(nodes: Sequence[Mapping[str, Any]]) -> str:
    """How the cluster looks, for error messages."""
    alive = alive_nodes(nodes)
    addresses = node_addresses(alive)
    if not any(can_run_trials(node) for node in alive):
        return (
            f"this Ray cluster ({len(alive)} node(s) at {', '.join(addresses) or 'no address'}) has no node "
            "with CPUs or GPUs for trials yet: they will run on worker machines the autoscaler adds"
        )
    return f"this Ray cluster spans {len(addresses)} machines ({', '.join(addresses)})"


# -------------------------------------------------------------------------------------- storage


def local_storage_folder(storage_path: str) -> Path | None:
    """The local folder a Tune storage path names (plain path or ``file://`` URI), else None."""
    text = str(storage_path).strip()
    if "://" not in text:
        return Path(text).expanduser().resolve()
    parts = urlsplit(text)
    if parts.scheme.lower() != "file":
        return None
    return Path(unquote(parts.path)).resolve()


def filesystem_type(path: Path, mounts_text: str | None = None) -> str | None:
    """The filesystem type of the mount holding ``path`` (which need not exist yet), or None.

    ``mounts_text``: the content of /proc/self/mounts (read when None; None where it is missing,
    e.g. macOS). The longest mount point that contains ``path`` wins.
    """
    if mounts_text is None:
        try:
            mounts_text = MOUNTS_FILE.read_text()
        except OSError:
            return None
    best_point, best_type = None, None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_OCTAL_ESCAPE.sub(lambda match: chr(int(match.group(1), 8)), fields[1]))
        if path == point or point in path.parents:
            if best_point is None or len(point.parts) >= len(best_point.parts):
                best_point, best_type = point, fields[2]
    return best_type


def shared_storage_declared(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``FER_RAY_SHARED_STORAGE`` says local storage paths are shared mounts."""
    environ = os.environ if environ is None else environ
    return environ.get(SHARED_STORAGE_ENV, "").strip().lower() in _TRUE


def check_storage_for_cluster(storage_path: str, nodes: list[dict]) -> None:
    """Raise ClusterSetupError when Tune storage is a local folder the other machines cannot see.

    nodes: ``ray.nodes()``. Nothing is checked on a single machine. On several: URIs other than
    ``file://`` pass; a local folder passes when it lies on a network filesystem or when
    ``FER_RAY_SHARED_STORAGE=1`` is set.
    """
    if not spans_machines(nodes):
        return
    folder = local_storage_folder(storage_path)
    if folder is None or shared_storage_declared():
        return
    fstype = filesystem_type(folder)
    if fstype in NETWORK_FILESYSTEMS:
        return
    where = f"a {fstype} filesystem" if fstype else "a filesystem fer_ray cannot identify"
    raise ClusterSetupError(
        f"storage.path {storage_path!r} is the local folder {folder} (on {where}), but "
        f"{_cluster_shape(nodes)}. Trials on other machines would write their checkpoints to their own "
        "disk, where the driver and a retry on another node cannot read them. Set "
        "--storage s3://<bucket>/<prefix> (or gs://...), or a folder on a shared filesystem (NFS) "
        f"mounted at the same path on every node; if {folder} already is such a mount, set "
        f"{SHARED_STORAGE_ENV}=1."
    )


# ------------------------------------------------------------------------------------- tracking


def is_loopback_host(host: str | None) -> bool:
    """localhost, 127.0.0.0/8, ::1 and the unspecified 0.0.0.0 / :: (all mean 'this machine')."""
    if not host:
        return False
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def check_tracking_for_cluster(uri: str, nodes: list[dict]) -> None:
    """Raise ClusterSetupError when trials on other machines could not log to MLflow at ``uri``.

    nodes: ``ray.nodes()``. Nothing is checked on a single machine. On several: a sqlite file is
    refused (it lives on the driver's disk; sqlite over NFS corrupts), and so is a URI whose host is
    loopback (each worker would reach itself). An http(s) server or database at a routable host passes.
    """
    if not spans_machines(nodes):
        return
    head = head_address(nodes) or "<head private IP>"
    fix = f"Run an MLflow tracking server on the head (cluster.yaml starts one on port 5000) and pass --tracking-uri http://{head}:5000"
    scheme = str(uri).split("://", 1)[0].split("+", 1)[0].lower() if "://" in str(uri) else ""
    if scheme == "sqlite":
        raise ClusterSetupError(
            f"tracking.uri {uri!r} is a sqlite file on the driver's machine, but {_cluster_shape(nodes)}: "
            f"trials log to MLflow from the node they run on and cannot reach that file. {fix}."
        )
    host = urlsplit(str(uri)).hostname
    if is_loopback_host(host):
        raise ClusterSetupError(
            f"tracking.uri {uri!r} names {host}, but {_cluster_shape(nodes)}: on every other machine "
            f"{host} is that machine itself, not the one running MLflow. Use an address every node "
            f"reaches, e.g. --tracking-uri http://{head}:5000 for a server on the head."
        )
