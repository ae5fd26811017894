"""The Ray token mechanism of cluster.yaml / cluster-local.yaml, run for real on this machine.

The files' own `export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$HOME/ray_auth_token` (what the start
commands and the driver's ~/.bashrc get), with HOME a temporary folder holding the token file that
file_mounts would have copied there: a head and a worker node start with it (`ray start`, as the launcher
runs them), a driver with it connects and sees both nodes, a driver without the token is refused.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
_EXPORT = re.compile(r"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=\$HOME/[A-Za-z0-9_./-]+")
_DRIVER = "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False); print('nodes', sum(n['Alive'] for n in ray.nodes()))"


def _auth_export(path: Path) -> str:
    """The one auth export line the file puts before `ray start` on the head, on the workers and in ~/.bashrc."""
    config = yaml.safe_load(path.read_text())
    found = {
        m.group(0)
        for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] + config["setup_commands"]
        if (m := _EXPORT.search(c))
    }
    assert len(found) == 1, found
    return found.pop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def token_home() -> Iterator[Path]:
    """A HOME with the token where file_mounts puts it; short, for Ray's socket paths under its temp dir."""
    home = Path(tempfile.mkdtemp(prefix="rtok", dir="/tmp"))
    (home / "ray_auth_token").write_text("a3c1f0e2b7d94a6c8e5f1b2d3c4a5e6f\n")
    (home / "ray_auth_token").chmod(0o600)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _shell(command: str, home: Path, **popen) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(home)}
    return subprocess.Popen(["bash", "-c", command], env=env, text=True, start_new_session=True, **popen)


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the process group of one `ray start --block` (it stops the Ray processes it started)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow
def test_nodes_and_driver_share_the_token_and_a_driver_without_it_is_refused(token_home):
    export = _auth_export(REPO / "cluster.yaml")
    assert _auth_export(REPO / "cluster-local.yaml") == export, "one mechanism in both files, run once here"
    address = f"127.0.0.1:{_free_port()}"
    temp_dir = token_home / "t"
    common = "--num-cpus=1 --block --disable-usage-stats"
    head = _shell(
        f"{export}; {RAY} start --head --node-ip-address=127.0.0.1 --port={address.split(':')[1]} "
        f"--include-dashboard=false --temp-dir={temp_dir} {common}",
        token_home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(temp_dir.glob("session_latest/logs/gcs_server.out")):
            time.sleep(1.0)
        worker = _shell(
            f"{export}; {RAY} start --address={address} --node-ip-address=127.0.0.1 {common}",
            token_home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        seen = ""
        while time.time() < deadline:
            driver = _shell(
                f'{export}; {sys.executable} -c "{_DRIVER}" {address}', token_home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            seen = driver.communicate(timeout=120)[0]
            if "nodes 2" in seen:
                break
            time.sleep(2.0)
        assert "nodes 2" in seen, f"driver with the token: {seen[-2000:]}"

        refused = _shell(f'{sys.executable} -c "{_DRIVER}" {address}', token_home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = refused.communicate(timeout=120)[0]
        assert refused.returncode != 0 and "nodes 2" not in output, output[-2000:]
        assert "token authentication is enabled" in output, output[-2000:]
    finally:
        for process in (worker, head):
            if process is not None:
                _stop(process)
