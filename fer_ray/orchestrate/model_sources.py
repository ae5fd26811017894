"""Train once, evaluate many: find the trained models an evaluation sweep needs, and the training
stage that produces the missing ones.

An evaluation sweep names its model in ``source.model`` (see spec.SourceConfig). For ``train`` the
training config (data + model + train sections, one per training seed) is hashed; every fine-tuning
trial tags its run with that hash (``fer_ray.train_hash``), so a FINISHED run carrying it is reused and
only the missing seeds are trained, as an ordinary fine-tuning sweep run first. Running noise_sig.yaml
and then epsilon.yaml on the same model trains once in total; a second run of either trains nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fer_ray.core.artifacts import MODEL_ARTIFACT_DIR
from fer_ray.orchestrate.provenance import spec_hash
from fer_ray.orchestrate.spec import SpecError, SweepSpec, validate_spec

if TYPE_CHECKING:  # MLflow is imported where a tracking server is asked: --dry-run hashes recipes without it
    from fer_ray.orchestrate.tracking import Tracker

TAG_TRAIN_HASH = "fer_ray.train_hash"
#: train fields added after hashes were recorded: hashed only when set away from their default
LATE_TRAIN_FIELDS = ("warmup_epochs", "images_per_epoch")


def training_config(spec: SweepSpec) -> dict[str, Any]:
    """What determines a trained model: data, model and train sections (cache location excluded).
    Fields added later enter only when set away from their default (LATE_TRAIN_FIELDS), so a recipe that
    does not use them keeps the hash it had before they existed (and its finished runs stay reusable)."""
    data = spec.data.model_dump(mode="json", exclude={"cache_dir"})
    fields = type(spec.train).model_fields
    at_default = {name for name in LATE_TRAIN_FIELDS if getattr(spec.train, name) == fields[name].default}
    train = spec.train.model_dump(mode="json", exclude=at_default)
    return {"data": data, "model": spec.model.model_dump(mode="json"), "train": train}


def training_hash(spec: SweepSpec) -> str:
    """The identity of a trained model's recipe (same hash -> the same model would be trained)."""
    return spec_hash(training_config(spec))


def training_spec(spec: SweepSpec, seeds: list[int]) -> SweepSpec:
    """The fine-tuning sweep that trains ``spec``'s model for ``seeds`` (one trial per seed)."""
    raw = spec.model_dump(mode="json", include={"data", "model", "train", "resources", "failure", "tracking", "storage"})
    raw.update(
        name=f"{spec.name}-train",
        experiment="finetune",
        description=f"Training stage of the evaluation sweep {spec.name}.",
        search={"seeds": seeds},
    )
    # the profile's overrides are already in the sections copied above: the stage carries its name, not its overrides again
    return validate_spec(raw, source=f"{spec.name} (training stage)").model_copy(update={"profile": spec.profile})


def check_source(spec: SweepSpec, tracker: Tracker | None = None) -> None:
    """A model file named as the source must exist, and a models:/ source must be in the sweep's own
    registry (``tracker``'s URI) (checked in the driver before Ray starts; SpecError otherwise)."""
    source = spec.source.model
    if source.startswith("models:/") and tracker is not None:
        from fer_ray.orchestrate.mlflow_model import resolve_registered

        tracker.check()  # an unreachable server fails in seconds here, not after MLflow's minutes of retries
        resolve_registered(tracker, source)
    if source == "train" or source.startswith(("runs:/", "models:/")):
        return
    if not Path(source).is_file():
        raise SpecError(f"source.model: model file {source!r} not found (give a path every node can read)")


def find_models(spec: SweepSpec, tracker: Tracker) -> dict[int, str | None]:
    """For ``source.model: train``: train seed -> the model of a finished training run with this
    recipe (``runs:/<run id>/model/model.pt``), None for a seed still to train."""
    return {seed: _finished_training_run(spec, seed, tracker) for seed in spec.source.train_seeds}


def model_sources(spec: SweepSpec, found: dict[int, str | None], tracker: Tracker) -> list[str]:
    """The model sources an evaluation sweep fans out over: one per training seed, or the one named.

    Returns model URIs: ``runs:/<run id>/model``, ``models:/<name>/<version>`` (an alias pinned to the
    version it names now, so every trial evaluates the same one) or a local file path.
    Raises RuntimeError naming the seeds with no model (their training failed)."""
    if spec.source.model.startswith("models:/"):
        from fer_ray.orchestrate.mlflow_model import resolve_registered

        return [resolve_registered(tracker, spec.source.model).uri]
    if spec.source.model != "train":
        return [spec.source.model]
    missing = [seed for seed, source in found.items() if source is None]
    if missing:
        raise RuntimeError(f"training stage of {spec.name}: no finished model for train seeds {missing}; see the training sweep's runs")
    return [found[seed] for seed in spec.source.train_seeds]


def _finished_training_run(spec: SweepSpec, seed: int, tracker: Tracker) -> str | None:
    seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": seed})})
    run = tracker.find_finished_run(TAG_TRAIN_HASH, training_hash(seeded))
    return None if run is None else f"runs:/{run.info.run_id}/{MODEL_ARTIFACT_DIR}"
