"""Which params a trial's run logs (orchestrate.trial.applicable_params): only those that apply."""

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
