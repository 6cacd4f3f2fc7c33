"""The learned policy where MLflow and DVC users look for one, against a real SQLite store (no mocks):

* metatrain registers each policy as a version of a named pyfunc model (artifacts, signature, description)
  and moves alias `current` to it; `metaaug.load_policy("models:/...")` and `mlflow.pyfunc.load_model`
  load it; evaluate's verdict goes into the description of the version it judged;
* the digest a stage logs for a dataset is the md5 DVC records (datasets.dvc_md5 = dvc-data's hash;
  tests/test_pipeline_dvc.py compares it with a real dvc.lock);
* the core API imports neither MLflow nor DVC, and a `models:/` URI without MLflow is one line.
"""

import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pytest
import torch

import metaaug
from conftest import REPO, tiny_config
from metaaug import datasets, registry
from metaaug.errors import MetaaugError
from metaaug.policies import describe, read_policy
from metaaug.stages import metatrain, prepare


def test_dvc_md5_is_dvc_datas_directory_hash(tmp_path):
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "x.bin").write_bytes(bytes(range(256)) * 5000 + b"\r\n")  # > one read chunk; CRLF kept
    (data / ".hidden.json").write_text("{}\n")
    (data / "b.txt").write_text("b")
    fs = LocalFileSystem()
    _, _, tree = build(HashFileDB(fs, str(tmp_path / "cache")), str(data), fs, "md5", dry_run=True)
    assert datasets.dvc_md5(data) == tree.hash_info.value and tree.hash_info.value.endswith(".dir")
    _, _, one = build(HashFileDB(fs, str(tmp_path / "cache")), str(data / "b.txt"), fs, "md5", dry_run=True)
    assert datasets.dvc_md5(data / "b.txt") == one.hash_info.value


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """prepare, then metatrain twice (the second with another seed) under a named registered model."""
    monkeypatch.chdir(tmp_path)
    params = tiny_config(**{"metatrain.workers": 1, "tracking.policy_model": "digits-policy"})
    prepare.run(params, tmp_path / "prepared")
    metatrain.run(params, tmp_path / "prepared", tmp_path / "first")
    metatrain.run(params.model_copy(update={"seed": 1}), tmp_path / "prepared", tmp_path / "policy")
    return tmp_path


def test_metatrain_registers_each_policy_and_moves_the_alias(registered):
    client = mlflow.MlflowClient()
    versions = {int(v.version): v for v in client.search_model_versions("name = 'digits-policy'")}
    assert sorted(versions) == [1, 2]
    assert str(client.get_model_version_by_alias("digits-policy", "current").version) == "2"
    policy, provenance = read_policy(registered / "policy" / "policy.json")
    latest = versions[2]
    first_line = describe(policy, provenance["baseline_point"])[0]
    assert latest.description.startswith(first_line[0].upper() + first_line[1:])
    assert latest.description.endswith(registry.NOT_EVALUATED)
    assert latest.tags["dvc.md5"] == datasets.dvc_md5(registered / "policy")
    run = client.get_run(latest.run_id)
    assert run.data.tags["metaaug.stage"] == "metatrain" and latest.tags["metaaug.run"] == latest.run_id
    # the run's datasets: what it read and wrote, under DVC's digests
    logged = {(d.dataset.name, {t.key: t.value for t in d.tags}["mlflow.data.context"]): d.dataset.digest
              for d in run.inputs.dataset_inputs}
    assert logged == {("prepared", "input"): datasets.dvc_md5(registered / "prepared"),
                      ("policy", "output"): datasets.dvc_md5(registered / "policy")}
    info = mlflow.models.get_model_info("models:/digits-policy@current")
    assert info.signature.inputs.to_dict() == [{"type": "tensor", "tensor-spec": {"dtype": "uint8",
                                                                                  "shape": (-1, -1, -1, -1)}}]
    assert info.signature.params.to_dict()[0]["name"] == "seed"
    files = {a.path for a in client.list_logged_model_artifacts(info.model_id, "artifacts")}
    assert files == {"artifacts/policy.json", "artifacts/policy_albumentations.json", "artifacts/search.json"}

    # loaded by name, offline, from the default store: the policy files are the DVC outputs'
    assert metaaug.load_policy("models:/digits-policy@current") == policy
    assert metaaug.load_policy("models:/digits-policy/1") == metaaug.load_policy(registered / "first")
    model = mlflow.pyfunc.load_model("models:/digits-policy@current")
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    out = model.predict(images, params={"seed": 7})
    expected = metaaug.augment_batch(policy, torch.from_numpy(images).permute(0, 3, 1, 2),
                                     torch.Generator().manual_seed(7)).permute(0, 2, 3, 1).numpy()
    assert out.dtype == np.uint8 and np.array_equal(out, expected)

    # evaluate's verdict replaces the placeholder, and a later verdict replaces it again
    for verdict in ("**Verdict:** first.", "**Verdict:** second."):
        assert registry.record_verdict("digits-policy", latest.run_id, verdict, {}, "none best") == ["2"]
    assert registry.record_verdict("digits-policy", "unknown", "**Verdict:** none.", {}, "-") == []
    assert registry.record_verdict("no-such-model", latest.run_id, "**Verdict:** none.", {}, "-") == []
    described = client.get_model_version("digits-policy", "2").description
    assert described.endswith(registry.VERDICT_HEADING + "**Verdict:** second.") and "first" not in described
    assert client.get_model_version("digits-policy", "1").description.endswith(registry.NOT_EVALUATED)


def test_an_unknown_registered_policy_is_one_line(tmp_path):
    with pytest.raises(MetaaugError, match=r"^load_policy\('models:/nope@current'\): no MLflow store at .*mlflow.db "
                                           r"\(from MLFLOW_TRACKING_URI or MLFLOW_REGISTRY_URI\); expected") as err:
        metaaug.load_policy("models:/nope@current")  # a reader never creates the store it was pointed at
    assert "\n" not in str(err.value) and not (tmp_path / "mlflow.db").exists()
    mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments()  # the store exists, not the model
    with pytest.raises(MetaaugError, match=r"^load_policy\('models:/nope@current'\): .*; expected a registered "
                                           r"model version in sqlite:///") as err:
        metaaug.load_policy("models:/nope@current")
    assert "\n" not in str(err.value)


def run_python(code: str):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_the_api_imports_neither_mlflow_nor_dvc():
    done = run_python("""
        import sys
        import torch
        import metaaug
        from metaaug.policies import fixed_policy
        policy = fixed_policy("trivialaugment")
        metaaug.PolicyTransform(policy, seed=0)(torch.zeros(1, 8, 8, dtype=torch.uint8))
        metaaug.albumentations_pipeline(policy), metaaug.load_policy, metaaug.learn_policy
        heavy = ("mlflow", "dvc", "dvc_data", "typer", "matplotlib", "sklearn", "metaaug.tracking",
                 "metaaug.store", "metaaug.runner", "metaaug.registry", "metaaug.datasets")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m in heavy))
    """)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_a_registered_policy_without_mlflow_is_one_line():
    done = run_python("""
        import sys
        sys.modules["mlflow"] = None  # what a core install (no `pipeline` extra) has: import mlflow fails
        import metaaug
        from metaaug.errors import MetaaugError
        try:
            metaaug.load_policy("models:/metaaug-policy@current")
        except MetaaugError as exc:
            print(exc)
    """)
    assert done.stdout.strip() == ("load_policy('models:/metaaug-policy@current'): MLflow is not installed; "
                                   "expected `pip install \"metaaug[pipeline]\"` (or mlflow) to load a registered "
                                   "policy"), done.stdout + done.stderr


def test_a_registry_failure_is_one_line_after_the_outputs_are_written(tmp_path, monkeypatch, capsys):
    """A store that refuses new model versions (a real SQLite trigger): metatrain has written its outputs,
    then stops with one line naming the store, exit code 2, like any other MLflow failure."""
    import sqlite3

    import yaml

    from conftest import tiny_params
    from metaaug.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(**{"metatrain.workers": 1})))
    with pytest.raises(SystemExit) as done:
        main(["prepare", "--out", "prepared"])
    assert done.value.code == 0
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("CREATE TRIGGER refuse BEFORE INSERT ON model_versions BEGIN "
                   "SELECT RAISE(ABORT, 'registry refused by the test'); END")
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["metatrain", "--prepared", "prepared", "--out", "policy"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]  # MLflow logs too
    assert done.value.code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(f"error: MLflow registry sqlite:///{tmp_path / 'mlflow.db'}: registering the policy "
                                "as a version of model 'metaaug-policy' failed (") and "expected a store" in errors[0]
    assert (tmp_path / "policy" / "policy.json").is_file()  # the DVC output does not depend on the registry


def test_the_command_without_the_pipeline_extra_is_one_line():
    done = run_python("""
        import sys
        sys.modules["typer"] = None  # a core install: no typer (nor DVC, MLflow)
        sys.argv = ["metaaug", "--help"]
        from metaaug.command import main
        main()
    """)
    assert done.returncode == 2 and done.stderr == (
        "error: the metaaug command runs the pipeline, which needs typer; expected `pip install \"metaaug[pipeline]\"` "
        "(the core install is the Python API only)\n"), done.stderr
