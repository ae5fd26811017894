"""The sweep file: schema, loading, profiles and ``--set`` overrides.

A sweep file is YAML with these top-level sections (each a pydantic model; unknown keys are errors):

    name, experiment, description   what runs (experiment = a module in fer_ray/experiments)
    data, model, train              the science config (fer_ray/core/config.py)
    settings                        the experiment's own settings (validated by its Experiment.settings
                                    model; files that still call it ``eval`` are read, with a message)
    search                          grid values / seeds, or Optuna (+ ASHA)
    resources                       cpu and gpu per trial (fractions allowed)
    failure                         retries of a failed trial
    tracking                        MLflow URI and experiment name
    storage                         where Ray Tune keeps trial state (local path, file://, s3://)
    profile, profiles               named override sets; ``profile`` picks the one applied

Resolution order, later wins: file values < the chosen profile's overrides < ``--set`` overrides <
the trial's own grid/Optuna values. Every error is a :class:`SpecError` that names the file, the
dotted key path and the valid choices (with the closest match for a misspelt key).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from fer_ray.core.config import DataConfig, ModelConfig, Strict, TrainConfig
from fer_ray.core.errors import InputError
from fer_ray.experiments import evaluates_model, experiment_names, settings_model
from fer_ray.experiments.base import Trial


class SpecError(InputError):
    """A sweep file or override that cannot run: the message names where and why."""


class RenamedKeyWarning(FutureWarning):
    """A sweep file or override uses a key under its old name (it is read under the new one)."""


# --------------------------------------------------------------------------------------- sections


class Distribution(Strict):
    """One Optuna search dimension: exactly one of the keys is set."""

    loguniform: tuple[float, float] | None = None
    uniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = Field(None, description="[low, high) integers")
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        set_keys = [k for k in ("loguniform", "uniform", "randint", "choice") if getattr(self, k) is not None]
        if len(set_keys) != 1:
            raise ValueError(f"give exactly one of loguniform/uniform/randint/choice (got {set_keys or 'none'})")
        bounds = self.loguniform or self.uniform or self.randint
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"low must be < high, got {list(bounds)}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform bounds must be > 0, got {list(self.loguniform)}")
        return self


class AshaConfig(Strict):
    """ASHA early stopping of unpromising Optuna trials (per-epoch reports)."""

    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(2.0, gt=1.0)


class OptunaConfig(Strict):
    num_samples: int = Field(8, ge=1)
    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    space: dict[str, Distribution]
    asha: AshaConfig | None = AshaConfig()
    seed: int = 0


class SearchConfig(Strict):
    """What varies across trials. Grid keys are dotted paths into the spec (e.g. model.arch)."""

    grid: dict[str, list[Any]] = {}
    seeds: list[int] = Field([0], min_length=1, description="each grid point runs once per seed")
    optuna: OptunaConfig | None = None
    max_concurrent: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _grid_values_present(self) -> SearchConfig:
        empty = [k for k, v in self.grid.items() if len(v) == 0]
        if empty:
            raise ValueError(f"grid values must not be empty: {empty}")
        if self.optuna is not None and self.grid:
            raise ValueError("use either search.grid or search.optuna, not both")
        return self


class ResourcesConfig(Strict):
    """What each trial asks Ray for. ``gpu: auto`` (the default) becomes a share of a GPU sized by the
    model and image size where the cluster has GPUs, else 0 (rule: fer_ray/orchestrate/resources.py)."""

    cpu: float = Field(1.0, gt=0.0, description="CPUs per trial")
    gpu: float | Literal["auto"] = Field(
        "auto",
        description="GPUs per trial; 0.25 = four trials share one GPU; 'auto' = a share sized by the "
        "model where the cluster has GPUs, else 0",
    )

    @field_validator("gpu", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        """One message for both alternatives (pydantic would list one per member of the union)."""
        if value == "auto":
            return value
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not number >= 0.0 or isinstance(value, bool):
            raise ValueError(f"must be 'auto' or a number >= 0, got {value!r}")
        return number

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> ResourcesConfig:
        if self.gpu != "auto" and self.gpu > 1 and self.gpu != int(self.gpu):
            raise ValueError(f"resources.gpu above 1 must be a whole number, got {self.gpu}")
        return self


class FailureConfig(Strict):
    max_retries: int = Field(2, ge=0, description="a failed trial restarts from its last checkpoint")
    checkpoint_every: int = Field(
        1,
        ge=0,
        description="epochs between a training trial's checkpoints, the last epoch always included; 0: none "
        "(a retried trial starts over). Each is the model and optimizer state (about 0.9 GB for ResNet-152)",
    )


class TrackingConfig(Strict):
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI; relative sqlite paths are from the cwd")
    experiment: str = "fer_ray"


class StorageConfig(Strict):
    path: str = Field("ray_results", description="Tune storage: local path, file://, s3://, gs://")


class SourceConfig(Strict):
    """Which trained model an evaluation sweep (noise, fgsm, tsne, saliency, bias) evaluates.

    model: 'train'   this file's data/model/train sections: a finished training run with the same
                     config hash is reused, otherwise it is trained first (one model per train seed);
           'runs:/<run id>/model', 'models:/<name>/<version>' or 'models:/<name>@<alias>'   an MLflow
                     model (a registered one is looked up in this sweep's tracking server);
           a path   a fer_ray model file (fer_ray.core.model_file.save_model) every node can read.
    """

    model: str = "train"
    train_seeds: list[int] = Field([0], min_length=1, description="model='train': one model per seed")


#: the section of a sweep file holding the experiment's own settings (its Experiment.settings model)
SETTINGS_SECTION = "settings"
#: its former name, still read (with a RenamedKeyWarning naming the new one)
OLD_SETTINGS_SECTION = "eval"

# The sweep file's key is `register` (issue 15); on a pydantic model it shadows ABCMeta.register, which
# nothing calls on a spec: the warning about that alone is silenced.
warnings.filterwarnings("ignore", message='Field name "register" in "SweepSpec" shadows', category=UserWarning)


class SweepSpec(Strict):
    """One experiment = one sweep file."""

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # no "..", no hidden folder: it names the report folder
    experiment: str
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    settings: dict[str, Any] = Field({}, description="the experiment's own settings (its Experiment.settings model)")
    search: SearchConfig = SearchConfig()
    resources: ResourcesConfig = ResourcesConfig()
    failure: FailureConfig = FailureConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    source: SourceConfig = SourceConfig()
    register: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="finetune sweeps: register the trial model with the best best_val_acc under this name "
        "in the sweep's MLflow model registry (evaluate it later with source.model: models:/<name>/<version>)",
    )
    profile: str = Field("none", description="name of the entry of `profiles` applied ('none' = as written)")
    profiles: dict[str, dict[str, Any]] = {}

    @field_validator("experiment")
    @classmethod
    def _known_experiment(cls, experiment: str) -> str:
        if experiment not in experiment_names():
            raise ValueError(_unknown("experiment", experiment, experiment_names()))
        return experiment

    @model_validator(mode="after")
    def _register_trains(self) -> SweepSpec:
        if self.register is not None and self.experiment != "finetune":
            raise ValueError(f"register: {self.register!r} needs a training sweep (experiment finetune), not {self.experiment!r}")
        return self

    @property
    def evaluates_model(self) -> bool:
        """Whether the experiment evaluates a trained model (its Experiment says; see source.model)."""
        return evaluates_model(self.experiment)

    def experiment_settings(self) -> BaseModel:
        """The ``settings`` section validated by the experiment's own settings model."""
        return settings_model(self.experiment).model_validate(self.settings)


# ------------------------------------------------------------------------------------- loading


def load_spec(path: str | Path, overrides: list[str] = (), profile: str | None = None) -> SweepSpec:
    """Read a sweep file, apply its profile and ``key=value`` overrides, validate everything.

    Raises SpecError naming the file and the key path for any problem.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: sweep file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return resolve_spec(raw, overrides, profile, source=str(path))


def resolve_spec(raw: dict[str, Any], overrides: list[str] = (), profile: str | None = None, source: str = "<spec>") -> SweepSpec:
    """file values < profile < overrides, validated. ``raw`` is not modified."""
    raw = rename_old_keys(json.loads(json.dumps(raw)), source)  # a deep copy of plain YAML data
    parsed_overrides = [
        (renamed_key(key, f"{source} (--set)"), value) for key, value in (parse_override(item, source) for item in overrides)
    ]
    for key, value in parsed_overrides:
        if key in ("profile",):
            raw["profile"] = value
    if profile is not None:
        raw["profile"] = profile
    chosen = raw.get("profile", "none")
    if chosen != "none":
        profiles = raw.get("profiles") or {}
        if chosen not in profiles:
            raise SpecError(f"{source}: profile: {_unknown('profile', chosen, ['none', *profiles])}")
        for key, value in profiles[chosen].items():
            set_dotted(raw, key, value, source=f"{source} (profile {chosen})")
    for key, value in parsed_overrides:
        if key != "profile":
            set_dotted(raw, key, value, source=f"{source} (--set)")
    rename_old_keys(raw, source)  # grid keys an override added under the old name
    spec = validate_spec(raw, source)
    check_search_keys(spec, source)
    return spec


def validate_spec(raw: dict[str, Any], source: str) -> SweepSpec:
    """Pydantic validation with errors rewritten to name the key path and the valid choices."""
    try:
        spec = SweepSpec.model_validate(raw)
        spec.experiment_settings()
    except ValidationError as err:
        prefix = f"{SETTINGS_SECTION}." if err.title != SweepSpec.__name__ else ""
        model = settings_model(raw.get("experiment", "")) if prefix else SweepSpec
        raise SpecError(f"{source}: " + _explain(err, model, prefix)) from None
    return spec


def check_search_keys(spec: SweepSpec, source: str) -> None:
    """Every grid / Optuna key must name a real key, and every grid value must validate there."""
    base = spec.model_dump(mode="json")
    for key, values in spec.search.grid.items():
        for value in values:
            trial = apply_overrides(base, {key: value}, source=f"{source} search.grid")
            validate_spec(trial, f"{source} search.grid[{key}={value!r}]")
    if spec.search.optuna is not None:
        for key, dist in spec.search.optuna.space.items():
            sample = (dist.choice or [None])[0] if dist.choice else (dist.loguniform or dist.uniform or dist.randint)[0]
            trial = apply_overrides(base, {key: sample}, source=f"{source} search.optuna.space")
            validate_spec(trial, f"{source} search.optuna.space[{key}]")


# ----------------------------------------------------------------------------------- old names


def renamed_key(dotted: str, source: str) -> str:
    """``eval.x`` -> ``settings.x`` (with a RenamedKeyWarning naming the new key); others unchanged."""
    head, dot, rest = dotted.partition(".")
    if head != OLD_SETTINGS_SECTION:
        return dotted
    new = SETTINGS_SECTION + dot + rest
    warnings.warn(
        f"{source}: {dotted!r} is now {new!r} (the '{OLD_SETTINGS_SECTION}:' section is called '{SETTINGS_SECTION}:')",
        RenamedKeyWarning,
        stacklevel=3,
    )
    return new


def rename_old_keys(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """A raw sweep file with the old settings section name read as the new one: the section itself,
    and dotted keys under search.grid, search.optuna.space and profiles. Changes ``raw`` in place."""
    if OLD_SETTINGS_SECTION in raw:
        if SETTINGS_SECTION in raw:
            raise SpecError(
                f"{source}: both '{OLD_SETTINGS_SECTION}:' and '{SETTINGS_SECTION}:' given; "
                f"'{OLD_SETTINGS_SECTION}:' is the old name of '{SETTINGS_SECTION}:', keep one"
            )
        warnings.warn(
            f"{source}: the '{OLD_SETTINGS_SECTION}:' section is now called '{SETTINGS_SECTION}:' (read as such)",
            RenamedKeyWarning,
            stacklevel=3,
        )
        raw[SETTINGS_SECTION] = raw.pop(OLD_SETTINGS_SECTION)
    search = raw.get("search") if isinstance(raw.get("search"), dict) else {}
    optuna = search.get("optuna") if isinstance(search.get("optuna"), dict) else {}
    profiles = raw.get("profiles") if isinstance(raw.get("profiles"), dict) else {}
    mappings = [(search, "grid", f"{source} search.grid"), (optuna, "space", f"{source} search.optuna.space")]
    mappings += [(profiles, name, f"{source} profiles.{name}") for name in profiles]
    for parent, key, where in mappings:
        if isinstance(parent.get(key), dict):
            parent[key] = {renamed_key(k, where): v for k, v in parent[key].items()}
    return raw


# ----------------------------------------------------------------------------------- overrides


def parse_override(item: str, source: str = "--set") -> tuple[str, Any]:
    """``"train.lr=3e-4"`` -> ("train.lr", 0.0003). Values are parsed as YAML (numbers, lists, null)."""
    if "=" not in item:
        raise SpecError(f"{source}: override {item!r} must look like key.path=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``raw[a][b][c] = value`` for ``dotted = "a.b.c"``, checking every key exists in the schema.

    Below a free-form mapping (``eval``, ``search.grid``, ``search.optuna.space``) the rest of the
    path is one key, so ``search.optuna.space.train.lr`` addresses the ``train.lr`` dimension.
    """
    keys = _schema_keys(dotted.split("."), source)
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise SpecError(f"{source}: {dotted}: {key} holds a value, not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """A copy of ``base`` with dotted overrides applied."""
    out = json.loads(json.dumps(base))
    for key, value in overrides.items():
        set_dotted(out, renamed_key(key, source), value, source)
    return out


def _schema_keys(parts: list[str], source: str) -> list[str]:
    """Walk the pydantic schema along ``parts``; return the keys to set (see set_dotted)."""
    model: type[BaseModel] = SweepSpec
    keys: list[str] = []
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(keys) or "top level"
            raise SpecError(f"{source}: {'.'.join(parts)}: {_unknown(f'key at {where}', part, list(fields))}")
        keys.append(part)
        annotation = fields[part].annotation
        rest = parts[i + 1 :]
        if not rest:
            return keys
        if _is_mapping(annotation):
            return keys + [".".join(rest)]
        submodel = _submodel(annotation)
        if submodel is None:
            raise SpecError(f"{source}: {'.'.join(parts)}: {'.'.join(keys)} holds a value, not a section")
        model = submodel
    return keys


def _options(annotation: Any) -> tuple[Any, ...]:
    """The alternatives of a field type: the members of a Union/Optional, else the type itself."""
    return typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)


def _is_mapping(annotation: Any) -> bool:
    return any(typing.get_origin(option) is dict for option in _options(annotation))


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds (through Optional), or None for plain values and mappings."""
    for option in _options(annotation):
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


# -------------------------------------------------------------------------------- trial points


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every trial of a grid sweep as its dotted overrides.

    Training sweeps: grid product x search.seeds (train.seed last). Evaluation sweeps: the grid
    product alone (their models, one per training seed, enter the grid as ``source.model``).
    """
    keys = list(spec.search.grid)
    seeds = [{}] if spec.evaluates_model else [{"train.seed": s} for s in spec.search.seeds]
    points = []
    for values in itertools.product(*(spec.search.grid[k] for k in keys)):
        for seed in seeds:
            points.append({**dict(zip(keys, values)), **seed})
    return points


def trial_spec(spec: SweepSpec, overrides: dict[str, Any]) -> SweepSpec:
    """The spec one trial runs: the sweep's spec with the trial's own values applied."""
    raw = apply_overrides(spec.model_dump(mode="json"), overrides, source=f"trial {overrides}")
    return validate_spec(raw, source=f"trial {overrides}")


def trial_of(spec: SweepSpec) -> Trial:
    """The typed configuration an experiment's trial function receives for ``spec`` (a trial's spec:
    its values applied). model_source: the model an evaluation experiment evaluates; model_file is
    left for the trial to fill with its local copy."""
    return Trial(
        sweep=spec.name,
        data=spec.data,
        model=spec.model,
        train=spec.train,
        settings=spec.experiment_settings(),
        model_source=spec.source.model if spec.evaluates_model else None,
    )


# ------------------------------------------------------------------------------------- errors


def _unknown(what: str, value: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(v) for v in valid], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {what} {value!r}{hint} (valid: {', '.join(map(str, valid))})"


def _explain(err: ValidationError, model: type[BaseModel], prefix: str) -> str:
    """One line per problem: ``key.path: message``, unknown keys with the closest valid key."""
    lines = []
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        path = prefix + ".".join(loc)
        if problem["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = list(parent.model_fields) if parent is not None else []
            lines.append(f"{path}: {_unknown('key', loc[-1], valid)}")
        elif problem["type"] == "value_error":  # our own validators: the message names the value
            lines.append(f"{path}: {problem['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{path}: {problem['msg']} (got {problem.get('input')!r})")
    return "; ".join(lines)


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel] | None:
    for part in loc:
        field = model.model_fields.get(part)
        model = _submodel(field.annotation) if field is not None else None
        if model is None:
            return None
    return model
