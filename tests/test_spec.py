"""Sweep-file schema: loading, profiles, --set overrides and the error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fer_ray.orchestrate.spec import (
    RenamedKeyWarning,
    SpecError,
    grid_points,
    load_spec,
    resolve_spec,
    trial_spec,
)

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
MINIMAL = {"name": "t", "experiment": "finetune"}


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_file_validates_as_written_and_at_the_seed_scale(path):
    spec = load_spec(path)
    assert spec.data.dataset == "synthetic", "as written, each sweep runs on the embedded default"
    if spec.profiles:
        seed_scale = load_spec(path, profile="none")
        assert seed_scale.profile == "none"


def test_profile_applies_and_set_overrides_win_over_it():
    spec = load_spec(SWEEPS / "dataset_fraction.yaml")
    assert spec.profile == "embedded"
    assert (spec.model.arch, spec.model.weights, spec.data.image_size) == ("resnet18", "none", 32)
    seed_scale = load_spec(SWEEPS / "dataset_fraction.yaml", profile="none")
    assert (seed_scale.model.arch, seed_scale.model.weights, seed_scale.data.image_size) == ("resnet50", "imagenet", 224)
    overridden = load_spec(SWEEPS / "dataset_fraction.yaml", ["data.image_size=40", "train.lr=3e-4"])
    assert overridden.data.image_size == 40 and overridden.train.lr == pytest.approx(3e-4)


def test_set_reaches_nested_keys_and_parses_yaml_values():
    spec = resolve_spec(
        MINIMAL,
        [
            "data.split.seed=7",
            "data.dataset=kdef",
            "data.root=/data/KDEF",
            "model.head=[512, 128]",
            "train.augment.hflip=false",
            "train.patience=null",
            "search.seeds=[0,1,2]",
        ],
    )
    assert spec.data.split.seed == 7
    assert spec.data.dataset == "kdef" and str(spec.data.root) == "/data/KDEF"
    assert spec.model.head == [512, 128]
    assert spec.train.augment.hflip is False and spec.train.patience is None
    assert spec.search.seeds == [0, 1, 2]


def test_unknown_key_names_the_path_and_the_closest_valid_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "train": {"lrr": 0.1}}))
    with pytest.raises(SpecError) as err:
        load_spec(path)
    message = str(err.value)
    assert str(path) in message and "train.lrr" in message and "did you mean 'lr'" in message


def test_unknown_override_key_is_rejected_before_validation():
    with pytest.raises(SpecError, match=r"data\.splt\.seed: unknown key at data 'splt'; did you mean 'split'"):
        resolve_spec(MINIMAL, ["data.splt.seed=1"])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.arch=resnet19", "model.arch"),
        ("train.lr=-1", "train.lr"),
        ("train.batch_size=1", "train.batch_size"),  # a batch of one cannot train (BatchNorm): not a ZeroDivisionError later
        ("data.split.test=0.9", "split.val + split.test must be < 1"),
        ("model.trainable=layer5", "unknown backbone block"),
        ("resources.gpu=1.5", "whole number"),
        ("experiment=finetuen", "did you mean 'finetune'"),
        ("data.dataset=kdef", "data.root is required"),
    ],
)
def test_impossible_values_fail_with_the_key_path(override, fragment):
    with pytest.raises(SpecError, match=fragment.replace(".", r"\.").replace("+", r"\+")):
        resolve_spec(MINIMAL, [override])


def test_grid_values_are_validated_per_point():
    with pytest.raises(SpecError, match=r"search\.grid\[model\.arch='vgg16'\].*model\.arch"):
        resolve_spec({**MINIMAL, "search": {"grid": {"model.arch": ["resnet18", "vgg16"]}}})
    with pytest.raises(SpecError, match=r"unknown key at model 'dropot'"):
        resolve_spec({**MINIMAL, "search": {"grid": {"model.dropot": [0.1]}}})


def test_optuna_space_keys_are_checked_and_settable_by_dotted_path():
    raw = {**MINIMAL, "search": {"optuna": {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}}}
    spec = resolve_spec(raw, ["search.optuna.space.train.lr={loguniform: [0.001, 0.01]}"])
    assert spec.search.optuna.space["train.lr"].loguniform == (0.001, 0.01)
    with pytest.raises(SpecError, match="low must be < high"):
        resolve_spec(raw, ["search.optuna.space.train.lr={loguniform: [0.01, 0.001]}"])


def test_grid_points_cross_grid_with_seeds_and_trial_spec_applies_them():
    spec = resolve_spec({**MINIMAL, "search": {"grid": {"data.train_fraction": [0.5, 0.1]}, "seeds": [0, 1]}})
    points = grid_points(spec)
    assert points == [
        {"data.train_fraction": 0.5, "train.seed": 0},
        {"data.train_fraction": 0.5, "train.seed": 1},
        {"data.train_fraction": 0.1, "train.seed": 0},
        {"data.train_fraction": 0.1, "train.seed": 1},
    ]
    one = trial_spec(spec, points[3])
    assert one.data.train_fraction == 0.1 and one.train.seed == 1


def test_missing_file_and_bad_yaml_are_named(tmp_path):
    with pytest.raises(SpecError, match="sweep file not found"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=f"{bad}: not valid YAML"):
        load_spec(bad)


def test_unknown_experiment_names_the_key_and_the_closest_kind():
    with pytest.raises(SpecError) as caught:
        resolve_spec({"name": "x", "experiment": "finetun"})
    assert str(caught.value).endswith(
        "experiment: unknown experiment 'finetun'; did you mean 'finetune'? "
        "(valid: bias, evaluate, fgsm, finetune, noise, probe, saliency, svm, transfer, tsne)"
    )


def test_old_eval_section_and_keys_are_read_as_settings_with_a_message(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "old",
                "experiment": "noise",
                "eval": {"n_boot": 100},
                "search": {"grid": {"eval.noise_seed": [0, 1]}},
                "profiles": {"quick": {"eval.n_examples": 0}},
            }
        )
    )
    with pytest.warns(RenamedKeyWarning, match=r"'eval:' section is now called 'settings:'"):
        spec = load_spec(path, ["eval.variances=[0, 0.2]"], profile="quick")
    settings = spec.experiment_settings()
    assert (settings.n_boot, settings.n_examples, settings.variances) == (100, 0, [0.0, 0.2])
    assert spec.search.grid == {"settings.noise_seed": [0, 1]}
    with pytest.warns(RenamedKeyWarning, match=r"'eval.noise_seed' is now 'settings.noise_seed'"):
        assert trial_spec(spec, {"eval.noise_seed": 1}).experiment_settings().noise_seed == 1


def test_old_and_new_settings_sections_together_are_an_error():
    with pytest.raises(SpecError, match=r"both 'eval:' and 'settings:'"):
        resolve_spec({**MINIMAL, "eval": {}, "settings": {}})


@pytest.mark.parametrize(("field", "default", "value"), [("warmup_epochs", 0, 1), ("images_per_epoch", None, 400)])
def test_a_recipe_field_at_its_default_leaves_the_training_hash_as_it_was(field, default, value):
    """Finished training runs are found by fer_ray.orchestrate.model_sources.training_hash: fields added
    later (train.warmup_epochs, train.images_per_epoch) enter it only when set, so recipes that do not use
    them keep the hashes recorded before they existed (the values below were computed without them)."""
    from fer_ray.orchestrate.model_sources import training_config, training_hash

    plain = resolve_spec({"name": "a", "experiment": "finetune"})
    assert field not in training_config(plain)["train"]
    assert training_hash(plain) == "5698d6ff6b7f"
    resnet50 = resolve_spec({"name": "a", "experiment": "finetune"}, ["train.epochs=3", "model.arch=resnet50"])
    assert training_hash(resnet50) == "636aaea75105"
    at_default = "null" if default is None else default
    assert training_hash(resolve_spec({"name": "a", "experiment": "finetune"}, [f"train.{field}={at_default}"])) == training_hash(plain)
    changed = resolve_spec({"name": "a", "experiment": "finetune"}, [f"train.{field}={value}"])
    assert training_config(changed)["train"][field] == value and training_hash(changed) != training_hash(plain)
