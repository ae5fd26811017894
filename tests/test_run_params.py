"""Params on runs: a trial logs only those that apply (trial.applicable_params); a parent run logs what
its sweep varies (driver.varied_params)."""

from __future__ import annotations

from conftest import TINY
from fer_ray.orchestrate.spec import resolve_spec
from fer_ray.orchestrate.trial import applicable_params


def test_synthetic_run_logs_no_radiate_none_or_empty_sections():
    spec = resolve_spec({"name": "t", "experiment": "finetune"}, TINY)
    params = applicable_params(spec)
    assert params["train.lr"] == spec.train.lr and params["data.dataset"] == "synthetic"
    assert "data.synthetic.identities" in params and params["settings.save_model"] is True, "settings' defaults apply"
    assert not [key for key in params if key.startswith("data.radiate")]
    assert "data.root" not in params and "None" not in {str(value) for value in params.values()}
    assert not [key for key, value in params.items() if value == "{}"], "no empty section logged as '{}'"


def test_radiate_run_logs_its_section_and_not_the_synthetic_one(tmp_path):
    spec = resolve_spec({"name": "t", "experiment": "finetune"}, TINY + ["data.dataset=radiate", f"data.root={tmp_path}"])
    params = applicable_params(spec)
    assert params["data.root"] == str(tmp_path)
    assert "data.radiate.metadata" in params and not [key for key in params if key.startswith("data.synthetic")]


def test_parent_params_are_what_the_sweep_varies():
    from pathlib import Path

    from fer_ray.orchestrate.driver import varied_params
    from fer_ray.orchestrate.spec import load_spec

    sweeps = Path(__file__).resolve().parent.parent / "sweeps"
    assert varied_params(load_spec(sweeps / "quickstart.yaml")) == {"train.seed": "[0, 1]", "train.lr": "[0.001, 0.0003]"}
    hpo = varied_params(load_spec(sweeps / "hpo.yaml"))
    assert hpo["train.lr"] == '{"loguniform": [3e-05, 0.003]}' and hpo["optuna.num_samples"] == 24
    noise = varied_params(load_spec(sweeps / "noise_sig.yaml"))
    assert "train.seed" not in noise and noise["source.train_seeds"] == "[0]" and "settings.noise_seed" in noise


def test_varying_keys_leave_out_a_search_choice_of_one_value():
    """The embedded hpo searches model.trainable over [all] only: every trial has it, none varies it
    (the report's "varied per trial" line and the order of run names follow this)."""
    from pathlib import Path

    from fer_ray.orchestrate.spec import load_spec
    from fer_ray.orchestrate.trial import varying_keys

    hpo = load_spec(Path(__file__).resolve().parent.parent / "sweeps" / "hpo.yaml")
    assert varying_keys(hpo) == {"train.lr", "train.weight_decay", "model.dropout", "model.head"}
    assert "model.trainable" in varying_keys(load_spec(Path(__file__).resolve().parent.parent / "sweeps" / "hpo.yaml", profile="none"))
