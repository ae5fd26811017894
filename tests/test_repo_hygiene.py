"""What the README's main job writes into the checkout stays out of git: the MLflow database and the
artifact folder beside it (trained models: hundreds of MB), Tune's state, the reports, the venv."""

from __future__ import annotations

import subprocess
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

from fer_ray.orchestrate.spec import load_spec
from fer_ray.orchestrate.tracking import Tracker

REPO = Path(__file__).resolve().parent.parent


def test_what_the_quickstart_writes_in_the_checkout_is_ignored_by_git(monkeypatch):
    monkeypatch.chdir(REPO)  # `make quickstart` runs here
    spec = load_spec(REPO / "sweeps" / "quickstart.yaml")
    tracker = Tracker(spec.tracking.uri, spec.tracking.experiment)
    database = Path(tracker.uri.removeprefix("sqlite:///"))
    artifacts = Path(url2pathname(urlparse(tracker._artifact_location()).path))
    written = [
        database,
        artifacts / "1" / "0123abcd" / "artifacts" / "model" / "model.pt",
        Path(spec.storage.path).resolve() / "quickstart-20261201-120000" / "experiment_state.json",
        REPO / "reports" / spec.name / "report.md",
        REPO / ".venv" / "bin" / "python",
    ]
    relative = [str(path.relative_to(REPO)) for path in written]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *relative], cwd=REPO, capture_output=True, text=True)
    assert sorted(ignored.stdout.split()) == sorted(relative), f"not ignored: {set(relative) - set(ignored.stdout.split())}"
