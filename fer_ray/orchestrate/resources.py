"""CPUs and GPUs per trial: ``resources.gpu: auto`` resolved against the Ray cluster, and a request no
node can meet refused before any trial starts.

The rule of ``gpu: auto`` (the default of the spec and of every shipped sweep file):

* The cluster "has GPUs" when an alive node offers a ``GPU`` resource, or when the autoscaler of a
  ``ray up`` cluster may add a node type that declares one (see :func:`autoscaler_node_types`).
  Without GPUs every trial gets ``gpu: 0`` (CPU).
* With GPUs, a trial's share of one GPU follows from its network's compute per image: the forward
  GFLOPs of the largest ``model.arch`` the sweep runs at its largest ``data.image_size`` (both read
  from the file, its grid and its Optuna choices), relative to ResNet-50 at 224 px (the reference
  study's setting, which keeps one GPU busy by itself):

      load = GFLOPs(arch at 224 px) * (image_size / 224)^2 / GFLOPs(resnet50 at 224 px)
      load >= 0.5  -> 1 GPU      (ResNet-34/50/101/152 at 224 px; ResNet-50 at >= 160 px)
      load >= 0.25 -> 0.5 GPU    (ResNet-18 at 224 px; ResNet-50 at 112-159 px)
      otherwise    -> 0.25 GPU   (the quickstart: ResNet-18 at 40 px -> four trials share a GPU)

  Never less than a quarter: every trial process holds its own CUDA context and data copy, and
  small models are bound by their Python loop, so more than four per GPU gains little.
* ``resources.cpu`` is used as written (default 1), with or without a GPU.

Explicit numbers (``gpu: 0``, ``0.5``, ``2``) are used as written. Either way, a request that no node
can meet (CPUs and GPUs on the same node, as Ray places a trial) is a :class:`ResourcesUnavailable`
(a SpecError: exit code 2) naming what the cluster has, instead of trials that wait in PENDING forever.

Autoscaling: Ray's cluster launcher writes the cluster file it started from to
``~/ray_bootstrap_config.yaml`` on the head, where the driver runs (Ray Tune checks the same file to
tell an autoscaling cluster). Its ``available_node_types`` with ``max_workers > 0`` count as nodes
the cluster can add, with the ``resources`` each declares. A node type that declares no resources
(e.g. AWS filling them in from the instance type) is not known to have a GPU, so ``auto`` does not
count on it; it is also not known to lack one, so an explicit request is never refused because of it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fer_ray.orchestrate.spec import SpecError, SweepSpec

#: Forward GFLOPs per image at 224 px (torchvision's weight metadata for each ResNet).
FORWARD_GFLOPS_224 = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80, "resnet152": 11.51}
#: The setting that keeps one GPU busy by itself (the reference study's ResNet-50 at 224 px).
REFERENCE_ARCH, REFERENCE_SIZE = "resnet50", 224
#: (minimum load, GPU share) from the largest share down; see the module docstring.
GPU_SHARES = ((0.5, 1.0), (0.25, 0.5), (0.0, 0.25))
#: Where ``ray up`` leaves the cluster file on the head (Ray Tune reads the same path).
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
AUTO = "auto"
#: Tag on the parent and every child run: what each trial asked Ray for (``cpu=1 gpu=0.25``).
TAG_RESOURCES = "fer_ray.resources"


class ResourcesUnavailable(SpecError):
    """The sweep asks for CPUs/GPUs per trial that no node of the cluster has, nor can get."""


@dataclass(frozen=True)
class NodeShape:
    """One node (or node type the autoscaler may add): name and its total CPUs and GPUs.
    cpu / gpu None: the cluster file does not say (an autoscaled type without ``resources``)."""

    name: str
    cpu: float | None
    gpu: float | None

    def fits(self, cpu: float, gpu: float) -> bool:
        """Whether one trial asking ``cpu`` CPUs and ``gpu`` GPUs could be placed here (unknown: yes)."""
        return (self.cpu is None or self.cpu >= cpu) and (self.gpu is None or self.gpu >= gpu)

    def describe(self) -> str:
        def amount(value: float | None, unit: str) -> str:
            return f"? {unit}" if value is None else f"{value:g} {unit}"

        return f"{self.name}: {amount(self.cpu, 'CPU')}, {amount(self.gpu, 'GPU')}"


@dataclass(frozen=True)
class ClusterCapacity:
    """What trials can run on: the alive nodes, and the node types an autoscaler may add."""

    nodes: tuple[NodeShape, ...]
    node_types: tuple[NodeShape, ...] = ()

    @property
    def gpus(self) -> float:
        """GPUs of the alive nodes, summed."""
        return sum(node.gpu or 0.0 for node in self.nodes)

    @property
    def has_gpus(self) -> bool:
        """An alive node, or a node type the autoscaler may add, declares a GPU."""
        return any((node.gpu or 0.0) > 0 for node in (*self.nodes, *self.node_types))

    def fits(self, cpu: float, gpu: float) -> bool:
        return any(node.fits(cpu, gpu) for node in (*self.nodes, *self.node_types))

    def node_list(self) -> str:
        """``10.0.0.1: 8 CPU, 1 GPU; ...`` (the alive nodes)."""
        return "; ".join(node.describe() for node in self.nodes) or "none"

    def describe(self) -> str:
        """``the cluster has 2 GPUs (nodes: ...; autoscaler may add: ...)`` for messages."""
        parts = [f"nodes: {self.node_list()}"]
        if self.node_types:
            parts.append(f"autoscaler may add: {'; '.join(node.describe() for node in self.node_types)}")
        else:
            parts.append("no autoscaler")
        return f"the cluster has {self.gpus:g} GPUs ({'; '.join(parts)})"


@dataclass(frozen=True)
class Resources:
    """What each trial of a sweep asks Ray for; ``reason`` says how it was chosen."""

    cpu: float
    gpu: float
    reason: str

    def for_tune(self) -> dict[str, float]:
        """The mapping ``tune.with_resources`` takes."""
        return {"cpu": self.cpu, "gpu": self.gpu}

    def describe(self) -> str:
        """``1 CPU, 0.25 GPU per trial (auto: ...)``."""
        return f"{self.cpu:g} CPU, {self.gpu:g} GPU per trial ({self.reason})"


# ------------------------------------------------------------------------------------- the cluster


def capacity_from_nodes(nodes: Sequence[Mapping[str, Any]], node_types: Iterable[NodeShape] = ()) -> ClusterCapacity:
    """The capacity of the alive nodes of ``ray.nodes()`` (their total resources) plus ``node_types``."""
    shapes = []
    for node in nodes:
        if not node.get("Alive", node.get("alive", False)):
            continue
        resources = node.get("Resources") or {}
        shapes.append(
            NodeShape(str(node.get("NodeManagerAddress", "?")), float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)))
        )
    return ClusterCapacity(tuple(shapes), tuple(node_types))


def autoscaler_node_types(config: Mapping[str, Any] | None) -> tuple[NodeShape, ...]:
    """The node types a ``ray up`` cluster file lets the autoscaler add: ``available_node_types``
    other than the head type whose ``max_workers`` (default: the file's ``max_workers``) is above 0."""
    if not config:
        return ()
    default_max = config.get("max_workers", 2)
    shapes = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == config.get("head_node_type") or not node_type.get("max_workers", default_max):
            continue
        resources = node_type.get("resources")
        if resources is None:
            shapes.append(NodeShape(f"{name} (autoscaled)", None, None))
        else:
            shapes.append(NodeShape(f"{name} (autoscaled)", float(resources.get("CPU", 0)), float(resources.get("GPU", 0))))
    return tuple(shapes)


def read_bootstrap_config(path: Path = BOOTSTRAP_CONFIG) -> dict[str, Any] | None:
    """The cluster file ``ray up`` left on this machine, or None (not the head of such a cluster)."""
    path = path.expanduser()
    if not path.is_file():
        return None
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else None


def ray_capacity(bootstrap_config: Path = BOOTSTRAP_CONFIG) -> ClusterCapacity:
    """The capacity of the Ray cluster this process is connected to (ray.init done)."""
    import ray

    return capacity_from_nodes(ray.nodes(), autoscaler_node_types(read_bootstrap_config(bootstrap_config)))


def local_capacity(num_cpus: int | None = None, bootstrap_config: Path = BOOTSTRAP_CONFIG) -> ClusterCapacity:
    """What a local Ray would have on this machine, without starting it (for ``--dry-run``): ``num_cpus``
    or every CPU, and the GPUs Ray's own detection finds (NVML, honouring CUDA_VISIBLE_DEVICES)."""
    cpus = float(num_cpus or os.cpu_count() or 1)
    node = NodeShape("this machine", cpus, float(_local_gpus()))
    return ClusterCapacity((node,), autoscaler_node_types(read_bootstrap_config(bootstrap_config)))


def _local_gpus() -> int:
    """NVIDIA GPUs a local Ray would see here: the driver's /proc entries, narrowed by
    CUDA_VISIBLE_DEVICES as Ray narrows them. Read by hand (not Ray's NVML detection) so that
    ``--dry-run`` imports no Ray; 0 when there is no NVIDIA driver."""
    gpus = Path("/proc/driver/nvidia/gpus")
    found = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return found
    return min(found, len([device for device in visible.split(",") if device.strip() and device.strip() != "-1"]))


# -------------------------------------------------------------------------------------- resolving


def gpu_share(spec: SweepSpec) -> tuple[float, str]:
    """The GPU share of one trial under ``gpu: auto`` (module docstring) and the sentence saying why."""
    archs = _values(spec, "model.arch", spec.model.arch)
    sizes = _values(spec, "data.image_size", spec.data.image_size)
    arch, size = max(archs, key=FORWARD_GFLOPS_224.__getitem__), max(int(s) for s in sizes)
    load = FORWARD_GFLOPS_224[arch] * (size / 224) ** 2 / (FORWARD_GFLOPS_224[REFERENCE_ARCH] * (REFERENCE_SIZE / 224) ** 2)
    share = next(share for minimum, share in GPU_SHARES if load >= minimum)
    return share, f"auto: {arch} at {size} px = {load:.2f} x {REFERENCE_ARCH} at {REFERENCE_SIZE} px -> {share:g} GPU"


def _values(spec: SweepSpec, key: str, default: Any) -> list[Any]:
    """The values ``key`` takes in the sweep: its grid list, its Optuna choices, else the file's value."""
    if key in spec.search.grid:
        return list(spec.search.grid[key])
    optuna = spec.search.optuna
    if optuna is not None and key in optuna.space and optuna.space[key].choice:
        return list(optuna.space[key].choice)
    return [default]


def resolve_resources(spec: SweepSpec, capacity: ClusterCapacity) -> Resources:
    """The CPUs and GPUs each trial of ``spec`` asks for on ``capacity``.

    ``gpu: auto``: a share of a GPU (gpu_share) where the cluster has GPUs, else 0. Raises
    ResourcesUnavailable, naming what the cluster has, when no node (alive or autoscaled) can hold a trial.
    """
    cpu, asked = spec.resources.cpu, spec.resources.gpu
    if asked == AUTO:
        gpu, reason = gpu_share(spec) if capacity.has_gpus else (0.0, "auto: no GPU in the cluster")
    else:
        gpu, reason = float(asked), "as set"
    if not capacity.fits(cpu, gpu):
        raise ResourcesUnavailable(
            f"resources: the sweep asks {cpu:g} CPU and {gpu:g} GPU per trial ({reason}), and no node has "
            f"that: {capacity.describe()}. Lower resources.cpu / resources.gpu (--set resources.gpu=auto "
            "uses a GPU only where there is one), or start Ray where the GPUs are (--address)."
        )
    return Resources(cpu=cpu, gpu=gpu, reason=reason)


def resolved_spec(spec: SweepSpec, resources: Resources) -> SweepSpec:
    """``spec`` with its resources section set to the resolved numbers (what Tune and the runs see)."""
    section = spec.resources.model_copy(update={"cpu": resources.cpu, "gpu": resources.gpu})
    return spec.model_copy(update={"resources": section})


def resources_tag(spec: SweepSpec) -> str:
    """The value of TAG_RESOURCES for a (resolved) spec: ``cpu=1 gpu=0.25``."""
    gpu = spec.resources.gpu
    return f"cpu={spec.resources.cpu:g} gpu={gpu if isinstance(gpu, str) else format(gpu, 'g')}"


def concurrent_trials(resources: Resources, capacity: ClusterCapacity) -> int:
    """How many trials the alive nodes hold at once (each node: min over CPU and GPU of its capacity
    / the trial's ask); at least 1. Autoscaled node types are not counted (how many come is the
    autoscaler's call)."""
    total = 0
    for node in capacity.nodes:
        per_resource = [
            math.floor((have or 0.0) / ask + 1e-9) for have, ask in ((node.cpu, resources.cpu), (node.gpu, resources.gpu)) if ask > 0
        ]
        total += min(per_resource) if per_resource else 0
    return max(1, total)
