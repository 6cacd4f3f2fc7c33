"""The MLflow UI in headless Chromium (Debian's package; `tests/run.sh` installs it): a finished pipeline's stage
runs are listed on the experiment page, the evaluate run's page shows its metrics with their values, and the
Models page lists the registered policy. Screenshots of the pages are kept in test-artifacts/.

The UI is a React app that renders in the browser, so the page is read after Chromium has run its scripts
(`--dump-dom` after `--virtual-time-budget`), not from the server's HTML.
"""

import html
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from helpers import STAGES, served_pipeline, stage_runs  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"


def render(url: str, screenshot: Path, profile: Path) -> str:
    """The page's visible text once its scripts have run, saving a screenshot of it on the way."""
    assert CHROMIUM.exists(), f"{CHROMIUM} missing; expected Debian's chromium (`bash tests/run.sh` installs it)"
    screenshot.parent.mkdir(exist_ok=True)
    # --no-sandbox: we run as root; the background-networking flags keep it off the closed network
    cmd = [str(CHROMIUM), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1600,1000",
           f"--screenshot={screenshot}", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and screenshot.stat().st_size > 0, done.stderr[-2000:]
    text = re.sub(r"<(script|style)\b.*?</\1>|<[^>]+>", " ", done.stdout, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(text))


def test_experiment_page_lists_the_stage_runs(served_pipeline, tmp_path):  # noqa: F811
    import mlflow

    runs = stage_runs(served_pipeline.url)
    experiment = runs["prepare"].info.experiment_id
    everything = mlflow.MlflowClient(served_pipeline.url).search_runs([experiment])
    assert len(everything) == len(runs)  # a run per DVC stage; the arm x split runs are in their own experiment
    text = render(f"{served_pipeline.url}/#/experiments/{experiment}/runs", ARTIFACTS / "mlflow_experiment_runs.png",
                  tmp_path / "profile")
    assert "Run Name" in text and f"{len(everything)} matching runs" in text, text[:2000]
    assert set(re.findall(r"\b(" + "|".join(STAGES) + r")\b", text)) == set(STAGES), text[:2000]
    # the Dataset column: what each run read or wrote, under the md5 dvc.lock records (datasets.log_datasets)
    lock = yaml.safe_load((served_pipeline.project / "dvc.lock").read_text())["stages"]["prepare"]["outs"][0]
    assert f"data/prepared ({lock['md5'][:12]}" in text, text[:2000]


def test_the_experiment_opens_on_its_runs_and_names_the_winner(served_pipeline, tmp_path):  # noqa: F811
    """The experiment is marked as model development (MLflow 3's experiment kind tag). MLflow 3.17's UI follows
    its GenAI / Model training switch instead (remembered per browser, GenAI at first; URL parameter
    `workflowType`), so the documented link carries `?workflowType=machine_learning`: it opens on the runs
    table, not the GenAI overview. The evaluate run's name, in the first column, says which arm won with the
    gain's CI, so no column needs configuring."""
    import mlflow

    evaluate = stage_runs(served_pipeline.url)["evaluate"]
    experiment = mlflow.MlflowClient(served_pipeline.url).get_experiment(evaluate.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    winner = evaluate.data.tags["metaaug.winner"]
    assert re.fullmatch(r"(learned (beats|ties) \w+|\w+ beats learned), [-+]\d+\.\d\d \[[-+]\d+\.\d\d, "
                        r"[-+]\d+\.\d\d\] pts", winner), winner
    text = render(f"{served_pipeline.url}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning",
                  ARTIFACTS / "mlflow_experiment_opened.png", tmp_path / "profile")
    assert "Run Name" in text and f"evaluate: {winner}" in text, text[:2000]
    assert "Token usage" not in text and "Latency" not in text, text[:2000]


def as_in_the_ui(value: float) -> str | None:
    """A metric as the UI prints it (JavaScript's number formatting); None where it uses an exponent."""
    if value.is_integer():
        return str(int(value))
    return repr(value) if 1e-4 <= abs(value) < 1e16 else None


def test_evaluate_run_page_shows_every_metric_with_its_value(served_pipeline, tmp_path):  # noqa: F811
    run = stage_runs(served_pipeline.url)["evaluate"]
    url = f"{served_pipeline.url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    text = render(url, ARTIFACTS / "mlflow_evaluate_run.png", tmp_path / "profile")
    metrics = run.data.metrics
    assert f"Metrics ({len(metrics)})" in text, text[:2000]
    assert {"none", "learned", "gain", "gain_low", "gain_high"} <= set(metrics) and len(metrics) <= 12
    for key, value in metrics.items():
        shown = as_in_the_ui(value)
        assert f"{key} {shown}" in text if shown else key in text, (key, value)


def test_models_page_lists_the_registered_policy(served_pipeline, tmp_path):  # noqa: F811
    """metatrain registered the policy (through the server: registry and model artifacts); the UI's Models page
    lists it with its newest version, and the version's page shows the description evaluate completed."""
    import mlflow

    client = mlflow.MlflowClient(served_pipeline.url)
    version = client.get_model_version_by_alias("metaaug-policy", "current")
    assert version.run_id == stage_runs(served_pipeline.url)["metatrain"].info.run_id
    text = render(f"{served_pipeline.url}/#/models", ARTIFACTS / "mlflow_models.png", tmp_path / "profile")
    assert "metaaug-policy" in text and f"Version {version.version}" in text, text[:2000]
    page = render(f"{served_pipeline.url}/#/models/metaaug-policy/versions/{version.version}",
                  ARTIFACTS / "mlflow_policy_version.png", tmp_path / "profile2")
    assert "Evaluate's verdict" in page and "Verdict" in page.split("Evaluate's verdict", 1)[1], page[:3000]
