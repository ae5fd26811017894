"""Pre-flight: what a sweep needs that can be checked before Ray starts is checked here, once, in the
driver, before any MLflow run or Tune folder exists: the model source, the weights, and every data
set the trials read (the reader, every class present with images, every file decodes).

A failure is a :class:`PreflightError` (a SpecError: the CLI prints its one line and exits 2) that
names the file, key or value and says what to do. A sweep that runs builds the tensor cache here
(``prepare=True``), so the trials of this node never decode on a cold cache or race to build it;
``--dry-run`` (``prepare=False``) checks the same things without torch: it decodes each file with
PIL unless the cache already holds them, and fetches nothing.

On a multi-machine cluster the driver's node is checked (the data must be readable where the sweep
starts, as every node must read it); each other node still builds its own cache once, under
core.files.node_cached's lock, on its first trial.

Nothing here imports torch, ray or mlflow at module level (``--dry-run`` must answer in seconds).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fer_ray.core.config import DataConfig
from fer_ray.core.data.datasets import read_dataset
from fer_ray.core.data.decode import decode_each
from fer_ray.core.data.fingerprint import tensor_store
from fer_ray.core.data.records import DataError, FaceDataset
from fer_ray.orchestrate.model_sources import check_source
from fer_ray.orchestrate.spec import SpecError, SweepSpec, trial_spec
from fer_ray.orchestrate.weights import IMAGENET_FILES, hub_checkpoints, imagenet_archs

if TYPE_CHECKING:
    from fer_ray.orchestrate.tracking import Tracker


class PreflightError(SpecError):
    """Bad input found before anything started (exit 2): the message names the file, key or value
    and what to do about it."""


#: DataConfig fields that do not change which files are read or how they decode (one check covers them)
_NOT_READ = {"train_fraction", "augment"}

#: (words in a reader's DataError, what the user can do about it); the first match is used
_DATA_HINTS = (
    ("does not exist", "set data.root to the data set's folder (e.g. --set data.root=/data/KDEF)"),
    ("no KDEF-named images", "point data.root at the KDEF images (AF01HAS.JPG ...), or use data.dataset: folder for root/<class>/<image>"),
    ("has no images of class", "add images of the missing class(es), or keep other data.angles / data.sessions"),
    ("hold no images", "put images into the folder(s) named, or remove them"),
    ("no class sub-folders", "arrange the images as data.root/<class>/<image>"),
    ("cannot decode image", "replace or delete that file"),
    ("cannot read image file", "restore that file, or remove it from the data set"),
    ("metadata CSV", "set data.radiate.metadata to the CSV (relative to data.root)"),
)


def run_preflight(spec: SweepSpec, tracker: Tracker | None, prepare: bool = True) -> list[str]:
    """Check everything the sweep's trials (and its training stage) will need; one line per check.

    prepare=True (a sweep that runs): the ImageNet weights are fetched when missing, a registered
    model is looked up in ``tracker``'s registry, and each data set's tensor cache is built.
    prepare=False (--dry-run): the same checks with nothing fetched, built or looked up remotely.
    Raises PreflightError (or the SpecError of a model source or weights check) at the first problem.
    """
    return [
        *check_model_source(spec, tracker if prepare else None),
        *check_weights(spec, prepare),
        *(check_data(config, prepare) for config in data_configs(spec)),
    ]


def check_model_source(spec: SweepSpec, tracker: Tracker | None) -> list[str]:
    """An evaluation sweep's model: a file must exist; a models:/ name must be in the registry of
    ``tracker`` (not asked when None: then it is looked up at start)."""
    if not spec.evaluates_model:
        return []
    source = spec.source.model
    check_source(spec, tracker)
    if source == "train":
        return [f"source.model: train (one model per train seed {spec.source.train_seeds}; see 'training stage')"]
    if source.startswith("models:/") and tracker is None:
        return [f"source.model: {source}: looked up in the model registry at start"]
    if source.startswith("runs:/"):
        return [f"source.model: {source}: downloaded from MLflow by each trial"]
    return [f"source.model: {source}: found"]


def check_weights(spec: SweepSpec, fetch: bool) -> list[str]:
    """ImageNet weights (fetched into torch's hub cache when ``fetch``) and weight files named by path."""
    lines = []
    for value in _values(spec, "model.weights", spec.model.weights):
        if value not in ("none", "imagenet") and not Path(value).expanduser().is_file():
            raise PreflightError(
                f"model.weights: file {value!r} not found; give the path of a state-dict file every node can read, 'imagenet' or 'none'"
            )
        if value not in ("none", "imagenet"):
            lines.append(f"model.weights: {value}: found")
    archs = imagenet_archs(spec)
    if archs and fetch:
        from fer_ray.orchestrate.weights import prefetch_weights  # imports torch: only for a sweep that runs

        lines += [f"model.weights: imagenet {arch}: {path}" for arch, path in zip(archs, prefetch_weights(spec))]
    for arch in archs if not fetch else []:
        path = hub_checkpoints() / IMAGENET_FILES[arch]
        found = (
            "found (its hash is checked at start)" if path.is_file() else "missing: fetched at start when online, else place the file there"
        )
        lines.append(f"model.weights: imagenet {arch}: {path} {found}")
    return lines


def data_configs(spec: SweepSpec) -> list[DataConfig]:
    """The distinct data sets the sweep's trials read: one per combination of the grid's (and
    Optuna's choice) values of ``data.*`` keys that change which files are read or how they decode."""
    space = spec.search.optuna.space if spec.search.optuna else {}
    varied = {key: values for key, values in spec.search.grid.items() if key.startswith("data.")}
    varied |= {key: dist.choice for key, dist in space.items() if key.startswith("data.") and dist.choice}
    varied = {key: values for key, values in varied.items() if key.split(".")[1] not in _NOT_READ}
    configs: dict[str, DataConfig] = {}
    for combination in itertools.product(*varied.values()):
        config = trial_spec(spec, dict(zip(varied, combination))).data if varied else spec.data
        configs.setdefault(json.dumps(config.model_dump(mode="json", exclude=_NOT_READ), sort_keys=True), config)
    return list(configs.values())


def check_data(config: DataConfig, prepare: bool) -> str:
    """Read the data set ``config`` describes and check every file decodes.

    prepare=True: build its tensor cache (core.data.cache; imports torch) and check the split;
    prepare=False: decode each file with PIL unless the cache already holds the data set.
    Returns one line (images, classes, people, the cache); raises PreflightError naming the problem.
    """
    started = time.perf_counter()
    try:
        dataset = read_dataset(config)  # the synthetic faces are generated here on first use
        store = tensor_store(dataset, config.image_size, config.cache_dir)
        cached = store.is_file()
        if prepare:
            from fer_ray.core.data.cache import load_image_tensors
            from fer_ray.core.data.splits import split_dataset

            split_dataset(dataset, config.split)
            load_image_tensors(dataset, config.image_size, config.cache_dir)
        elif not cached:
            decode_each([image.path for image in dataset.images], config.image_size)
    except DataError as error:
        raise PreflightError(f"{_where(config)}: {error}; {_hint(str(error))}") from None
    if cached:
        decoded = "every file decoded before (tensor cache found)"
    else:
        decoded = "tensor cache built" if prepare else "every file decodes (cache built at start)"
    return f"{_where(config)}: {_counts(dataset)}, {config.image_size} px; {decoded} [{store}] ({time.perf_counter() - started:.1f} s)"


def _values(spec: SweepSpec, key: str, default: str) -> list[str]:
    """The values a grid or an Optuna choice gives ``key``, else its one value."""
    space = spec.search.optuna.space if spec.search.optuna else {}
    choice = space[key].choice if key in space else None
    return list(spec.search.grid.get(key, choice or [default]))


def _where(config: DataConfig) -> str:
    root = f", data.root={config.root}" if config.root is not None else ", generated faces"
    return f"data ({config.dataset}{root})"


def _counts(dataset: FaceDataset) -> str:
    people = {image.identity for image in dataset.images if image.identity is not None}
    who = f", {len(people)} people" if people else ""
    return f"{len(dataset)} images, {len(dataset.classes)} classes with images{who}"


def _hint(message: str) -> str:
    return next((hint for words, hint in _DATA_HINTS if words in message), "fix the data, or the sweep's data.* keys")
