"""Shared infrastructure, locally: the pipeline logs to a real `mlflow server` (SQLite backend, artifacts
served into its own directory) instead of a local file, and DVC versions the data in a remote (a local
directory): `dvc push`, then `dvc pull` into a fresh clone restores `data/augmented/` byte for byte, and
`dvc artifacts get <clone> policy` (dvc.yaml's `artifacts:`) fetches the policy by name from the remote.

`served_pipeline` is session-wide and also used by test_mlflow_ui.py: one server, one pipeline run
(test_pipeline_dvc.py covers `dvc repro` itself).
"""

from pathlib import Path

import pytest
import yaml

from helpers import STAGES, dvc, served_pipeline, sh, stage_runs  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow
def test_pipeline_logs_runs_and_artifacts_to_the_server(served_pipeline, tmp_path):
    import mlflow

    runs = stage_runs(served_pipeline.url)
    assert sorted(runs) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in runs.values())
    metrics = yaml.safe_load((served_pipeline.project / "metrics.json").read_text())
    assert runs["evaluate"].data.metrics == pytest.approx(metrics)  # the headline, in both views
    assert runs["train"].data.tags["upstream.augment"] == runs["augment"].info.run_id
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
