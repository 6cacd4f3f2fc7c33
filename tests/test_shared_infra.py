"""Shared infrastructure, locally: the pipeline logs to a real `mlflow server` (SQLite backend, artifacts
served into its own directory) instead of a local file, and DVC versions the data in a remote (a local
directory): `dvc push`, then `dvc pull` into a fresh clone restores `data/augmented/` byte for byte, and
`dvc artifacts get <clone> policy` (dvc.yaml's `artifacts:`) fetches the policy by name from the remote.

`served_pipeline` is session-wide and also used by test_mlflow_ui.py: one server, one pipeline run
(test_pipeline_dvc.py covers `dvc repro` itself).
"""

import re
import urllib.parse
from pathlib import Path

import pytest
import yaml

from helpers import STAGES, dvc, served_pipeline, sh, stage_runs  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow
def test_pipeline_logs_runs_and_artifacts_to_the_server(served_pipeline, tmp_path):
    import mlflow

    runs = stage_runs(served_pipeline.url)
    assert set(runs) == {*STAGES, "train@none", "train@trivialaugment"} - {"train"}  # a run per fixed arm
    assert all(r.info.status == "FINISHED" for r in runs.values())
    metrics = yaml.safe_load((served_pipeline.project / "metrics.json").read_text())
    assert runs["evaluate"].data.metrics == pytest.approx(metrics)  # the headline, in both views
    assert runs["train_learned"].data.tags["upstream.augment"] == runs["augment"].info.run_id
    assert not (served_pipeline.project / "mlflow.db").exists()  # nothing went to the local default
    # artifacts went through the server into its artifact store, and come back byte for byte
    prepare = runs["prepare"].info
    got = mlflow.MlflowClient(served_pipeline.url).download_artifacts(prepare.run_id, "target_samples.png", tmp_path)
    stored = list(served_pipeline.artifacts.rglob(f"{prepare.run_id}/artifacts/target_samples.png"))
    assert len(stored) == 1 and Path(got).read_bytes() == stored[0].read_bytes()


def test_dvc_push_then_pull_into_a_fresh_clone_restores_augmented_data(served_pipeline, tmp_path):
    project, remote = served_pipeline.project, tmp_path / "remote"
    for args in (("remote", "add", "-d", "shared", str(remote)), ("push",)):
        done = dvc(project, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    sh("git", "commit", "-qam", "dvc remote", cwd=project)
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(project), str(clone), cwd=tmp_path)
    assert not (clone / "data/augmented").exists()
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    original = sorted(p.relative_to(project) for p in (project / "data/augmented").rglob("*") if p.is_file())
    restored = sorted(p.relative_to(clone) for p in (clone / "data/augmented").rglob("*") if p.is_file())
    assert original == restored and any(p.name == "images.npy" for p in original)
    assert all((project / p).read_bytes() == (clone / p).read_bytes() for p in original)
    status = dvc(clone, "status")
    assert "up to date" in status.stdout, status.stdout

    # dvc.yaml's `artifacts:` name the policy, and a git tag in GTO's format (`<artifact>@v<semver>`, DVC's
    # model registry convention) makes this commit its version v0.1.0: `dvc artifacts get` fetches the
    # newest version by name from a fresh clone, whose workspace and cache hold nothing: from the remote
    sh("git", "tag", "-a", "policy@v0.1.0", "-m", "the learned policy", cwd=project)
    fresh = tmp_path / "fresh"
    sh("git", "clone", "-q", str(project), str(fresh), cwd=tmp_path)
    got = dvc(tmp_path, "artifacts", "get", str(fresh), "policy", "-o", str(tmp_path / "got"))
    assert got.returncode == 0, got.stdout + got.stderr
    policy = sorted(p.relative_to(project / "models/policy") for p in (project / "models/policy").rglob("*")
                    if p.is_file())
    assert policy == sorted(p.relative_to(tmp_path / "got") for p in (tmp_path / "got").rglob("*") if p.is_file())
    assert all((project / "models/policy" / p).read_bytes() == (tmp_path / "got" / p).read_bytes() for p in policy)
    assert not (fresh / ".dvc" / "cache").exists() or not any((fresh / ".dvc" / "cache").rglob("*.dir"))


def test_queued_experiments_keep_every_run_artifact_and_version_with_no_export(tmp_path, monkeypatch):
    """Two queued experiments of a new experiment name, run by `dvc queue start -j 2` in DVC's temporary copies,
    with MLFLOW_TRACKING_URI unset: the default store and artifact root are the repository's (DVC_ROOT), so once
    DVC has deleted its copies every run, every artifact and every registered version is still there."""
    import mlflow

    import metaaug
    from conftest import tiny_params
    from helpers import make_project, repro_in_process
    from test_concurrency import wait_for_queue  # noqa: F401  (polling `dvc queue status`)

    root = make_project(tmp_path / "project", tiny_params(**{"metatrain.workers": 1}))
    monkeypatch.chdir(root)
    repro_in_process(root)  # the baseline, logged to the test's own store (conftest)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "baseline", cwd=root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    try:
        for epochs in (1, 3):
            queued = dvc(root, "exp", "run", "--queue", "-S", "tracking.experiment=fresh exp",
                         "-S", f"metatrain.proxy_epochs={epochs}")
            assert queued.returncode == 0, queued.stderr
        assert dvc(root, "queue", "start", "-j", "2").returncode == 0
        tasks = wait_for_queue(root, 2, timeout=900)
        logs = "\n".join(dvc(root, "queue", "logs", task).stdout for task in tasks)
        assert set(tasks.values()) == {"Success"}, logs
    finally:
        dvc(root, "queue", "stop", "--kill")
    assert not list((root / ".dvc" / "tmp" / "exps").glob("tmp*")), "DVC's copies are gone"
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fresh exp")
    assert experiment.artifact_location == (root / "mlruns").as_uri()
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id, client.get_experiment_by_name("fresh exp-splits").experiment_id],
                              max_results=1000)
    stages = [r.data.tags.get("metaaug.stage") for r in runs]
    ran = re.findall(r"Running stage '([\w@]+)'", logs)
    assert sorted(s for s in stages if s) == sorted(r.split("@")[0] for r in ran)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert ran.count("metatrain") == ran.count("evaluate") == 2, ran
    for run in runs:  # every artifact a run lists is a file in the repository's mlruns/
        folder = Path(urllib.parse.urlparse(run.info.artifact_uri).path)
        assert folder.is_relative_to(root / "mlruns"), run.info.artifact_uri
        for artifact in client.list_artifacts(run.info.run_id):
            assert (folder / artifact.path).exists(), (run.info.run_id, artifact.path)
    model = next(m.name for m in client.search_registered_models() if m.tags.get("metaaug.experiment") == "fresh exp")
    versions = client.search_model_versions(f"name = '{model}'")
    assert len(versions) == 2
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    for version in versions:  # downloads, and matches the digest it recorded
        assert metaaug.load_policy(f"models:/{model}/{version.version}").ops
