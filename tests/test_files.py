"""core.files: atomic writes and the locked per-node file cache (real processes, real files)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pytest

from fer_ray.core.files import atomic_write, file_sha256, node_cached, node_cached_json


def test_atomic_write_replaces_whole_files_and_a_failed_write_leaves_the_old_one(tmp_path):
    target = tmp_path / "deep" / "arrays.npz"
    atomic_write(target, lambda temporary: np.savez_compressed(temporary, a=np.arange(3)))
    with np.load(target) as stored:
        np.testing.assert_array_equal(stored["a"], np.arange(3))  # numpy added no second suffix

    def half_then_fail(temporary: Path) -> None:
        temporary.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    with np.load(target) as stored:
        np.testing.assert_array_equal(stored["a"], np.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["arrays.npz"], "no temp file left behind"
    assert file_sha256(target) == hashlib.sha256(target.read_bytes()).hexdigest()


def test_node_cached_recomputes_a_file_its_loader_refuses(tmp_path):
    path = tmp_path / "value.json"
    path.write_text("not json of the right shape")
    value = node_cached(
        path,
        lambda: {"v": 2},
        save=lambda v, p: p.write_text(json.dumps(v)),
        load=lambda p: json.loads(p.read_text()) if p.read_text().startswith("{") else None,
    )
    assert value == {"v": 2} and json.loads(path.read_text()) == {"v": 2}


def _cache_in_child(folder: Path, name: str) -> None:
    """One forked process: wait for the start signal, then read-or-compute the shared file."""
    (folder / f"ready-{name}").touch()
    while not (folder / "go").exists():
        time.sleep(0.01)

    def compute():
        with open(folder / "computed", "a") as log:
            log.write(name + "\n")
        time.sleep(0.5)  # long enough for the other process to arrive while this one computes
        return np.arange(1_000_000, dtype=np.float32)

    def save(value, path):
        with open(path, "wb") as handle:
            np.save(handle, value)

    value = node_cached(folder / "features.npy", compute, save, lambda p: np.load(p))
    (folder / f"result-{name}").write_text(f"{float(value.sum())} {value.shape[0]}")


def test_two_processes_compute_the_cached_file_once_and_never_see_it_half_written(tmp_path):
    # fork: the children start at once with the modules already imported (spawn would re-import torch)
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_cache_in_child, args=(tmp_path, name)) for name in ("a", "b")]
    for process in processes:
        process.start()
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in ("a", "b")) and time.time() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for process in processes:
        process.join(timeout=60)

    assert [p.exitcode for p in processes] == [0, 0]
    expected = f"{float(np.arange(1_000_000, dtype=np.float32).sum())} 1000000"
    assert (tmp_path / "result-a").read_text() == (tmp_path / "result-b").read_text() == expected
    assert len((tmp_path / "computed").read_text().split()) == 1, "one process computed, the other waited and loaded"
    np.testing.assert_array_equal(np.load(tmp_path / "features.npy"), np.arange(1_000_000, dtype=np.float32))
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_failed_computation_leaves_no_file(tmp_path):
    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        node_cached_json(tmp_path / "x.json", fail)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json.lock"]
    assert node_cached_json(tmp_path / "x.json", lambda: {"a": 1}) == {"a": 1}
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
