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
from conftest import REPO
from helpers import search_policies
from metaaug import datasets, registry
from metaaug.errors import MetaaugError
from metaaug.policies import describe, read_policy


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
    search_policies(tmp_path / "prepared", [tmp_path / "first", tmp_path / "policy"],
                    **{"tracking.policy_model": "digits-policy"})
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


# The registry keyed by identity, one registry URI, forward-only aliases, verified downloads: policies registered
# straight from a policy folder (register_policy, as metatrain calls it) into real SQLite stores.

def policy_folder(root, name: str, op: str = "trivialaugment"):
    from metaaug.policies import fixed_policy, save_policy

    folder = root / name
    folder.mkdir()
    save_policy(fixed_policy(op), folder / "policy.json", {"method": "test", "baseline_point": op})
    return folder


def register_in(experiment: str, folder, model: str) -> str:
    """register_policy in a run of `experiment`, as metatrain does after publishing its output."""
    from metaaug.store import ensure_experiment, tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment_id=ensure_experiment(mlflow.MlflowClient(), experiment))
    with mlflow.start_run():
        return registry.register_policy(folder, model, "a policy")


def test_distinct_experiments_never_share_a_registered_model(tmp_path):
    from metaaug.config import TrackingConfig

    folder = policy_folder(tmp_path, "policy")
    names = {e: TrackingConfig(experiment=e).policy_model_name for e in ("my exp", "my_exp")}
    assert len(set(names.values())) == 2  # the default names differ: a hash of the exact name where it was changed
    for experiment, model in names.items():
        assert register_in(experiment, folder, model) == "1"
    with pytest.raises(MetaaugError, match=r"^registered model 'my_exp-policy' in sqlite:///.* holds experiment "
                                           r"'my_exp''s policies, not experiment 'my exp''s; expected "
                                           r"tracking.policy_model set to a name of its own$"):
        register_in("my exp", folder, "my_exp-policy")  # a collision, even when named on purpose
    mlflow.MlflowClient().create_registered_model("by-hand")
    with pytest.raises(MetaaugError, match="holds a model metaaug did not register"):
        register_in("my exp", folder, "by-hand")
    assert [str(v.version) for v in mlflow.MlflowClient().search_model_versions("name = 'my_exp-policy'")] == ["1"]


def test_writer_and_every_reader_use_mlflow_registry_uri(tmp_path, monkeypatch):
    first, second = policy_folder(tmp_path, "first", "none"), policy_folder(tmp_path, "second", "randaugment")
    register_in("exp", first, "exp-policy")  # into the tracking store's registry
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    register_in("exp", second, "exp-policy")  # into the registry named by MLFLOW_REGISTRY_URI: its version 1
    expected = metaaug.load_policy(second)
    assert metaaug.load_policy("models:/exp-policy@current") == expected
    assert metaaug.load_policy("models:/exp-policy/1") == expected
    model = mlflow.pyfunc.load_model("models:/exp-policy@current")  # MLflow reads the same variable
    assert model.metadata.model_id == registry.logged_model_id(
        mlflow.MlflowClient().get_model_version_by_alias("exp-policy", "current"))
    tracking_registry = mlflow.MlflowClient(registry_uri=os.environ["MLFLOW_TRACKING_URI"])
    assert tracking_registry.get_model_version_by_alias("exp-policy", "current").tags[registry.POLICY_SHA_TAG] != \
        mlflow.MlflowClient().get_model_version_by_alias("exp-policy", "current").tags[registry.POLICY_SHA_TAG]


MOVE_ALIAS = """
import sys
from metaaug import registry
client = registry.client()
for version in sys.argv[1:]:
    registry.move_alias(client, "exp-policy", "current", version)
"""


def test_the_alias_only_moves_forward_whatever_order_writers_finish_in(tmp_path):
    folder = policy_folder(tmp_path, "policy")
    for _ in range(4):
        register_in("exp", folder, "exp-policy")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias("exp-policy", "current").version) == "4"
    assert not registry.move_alias(client, "exp-policy", "current", "2")  # a late writer of an older version
    assert str(client.get_model_version_by_alias("exp-policy", "current").version) == "4"
    client.set_registered_model_alias("exp-policy", "current", "1")
    # writers at once, each moving it to its versions in another order: the newest wins
    orders = [["2", "4", "3"], ["4", "3", "2"]]
    writers = [subprocess.Popen([sys.executable, "-c", MOVE_ALIAS, *order], cwd=REPO) for order in orders]
    assert [w.wait(timeout=600) for w in writers] == [0, 0]
    assert str(client.get_model_version_by_alias("exp-policy", "current").version) == "4"


def test_a_downloaded_policy_is_checked_against_its_versions_digest(tmp_path):
    folder = policy_folder(tmp_path, "policy")
    register_in("exp", folder, "exp-policy")
    client = mlflow.MlflowClient()
    assert metaaug.load_policy("models:/exp-policy/1") == metaaug.load_policy(folder)
    client.set_model_version_tag("exp-policy", "1", registry.POLICY_SHA_TAG, "0" * 64)  # what an edit looks like
    with pytest.raises(MetaaugError, match=r"^load_policy\('models:/exp-policy@current'\): the downloaded policy.json does "
                                           r"not match its version \(SHA-256 [0-9a-f]{12}, the version records "
                                           r"000000000000\); expected") as err:
        metaaug.load_policy("models:/exp-policy@current")
    assert "\n" not in str(err.value)


def test_the_verdict_tags_the_version_and_champion_moves_only_when_learned_is_not_clearly_worse(tmp_path):
    folder = policy_folder(tmp_path, "policy")
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])  # not the URI an earlier test left set
    for gain_high, champion in ((-0.5, None), (0.4, "2")):
        register_in("exp", folder, "exp-policy")
        version = client.get_model_version_by_alias("exp-policy", "current")
        numbers = {"none": 60.0, "learned": 61.0, "gain": 1.0 if gain_high > 0 else -2.0,
                   "gain_low": -1.0 if gain_high > 0 else -3.5, "gain_high": gain_high}
        with mlflow.start_run():  # the evaluate run
            assert registry.record_verdict("exp-policy", version.run_id, "**Verdict.**", numbers, "the winner") == \
                [str(version.version)]
        tags = client.get_model_version("exp-policy", version.version).tags
        assert tags["metaaug.verdict"] == "the winner"
        assert tags["metaaug.gain"] == f"{numbers['gain']:+.2f} [{numbers['gain_low']:+.2f}, {gain_high:+.2f}]"
        aliases = {k: str(v) for k, v in client.get_registered_model("exp-policy").aliases.items()}
        assert aliases.get("champion") == champion and aliases["current"] == str(version.version)
        linked = {m.key: m.value for m in client.get_logged_model(registry.logged_model_id(version)).metrics}
        assert linked == numbers  # the headline metrics, on the logged model's page


def test_the_default_store_is_the_project_roots_and_a_reader_outside_one_says_so(tmp_path, monkeypatch):
    from metaaug import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / ".dvc").mkdir(parents=True)
    (project / "sub").mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(project / "sub")
    assert store.tracking_uri() == f"sqlite:///{project / 'mlflow.db'}" == store.registry_uri()
    assert store.artifact_location(store.tracking_uri()) == (project / "mlruns").as_uri()
    monkeypatch.setenv("DVC_ROOT", str(project))  # what DVC sets in its temporary copy of a queued experiment
    monkeypatch.chdir(elsewhere)
    assert store.tracking_uri() == f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.delenv("DVC_ROOT")
    with pytest.raises(MetaaugError, match=rf"^load_policy\('models:/metaaug-policy@current'\): no MLflow store at "
                                           rf"{elsewhere}/mlflow.db \(from {elsewhere}, which is inside no DVC "
                                           r"project\); expected MLFLOW_TRACKING_URI set"):
        metaaug.load_policy("models:/metaaug-policy@current")
    assert list(elsewhere.iterdir()) == []  # no empty mlflow.db left behind


def test_experiments_are_created_for_model_development_with_an_explicit_artifact_location(tmp_path):
    from metaaug.store import ensure_experiment

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    made = client.get_experiment(ensure_experiment(client, "fresh"))
    assert made.tags["mlflow.experimentKind"] == "custom_model_development"
    assert made.artifact_location == (tmp_path / "mlruns").as_uri()  # beside the store, not ./mlruns of the cwd
    old = client.create_experiment("made by hand")
    assert client.get_experiment(ensure_experiment(client, "made by hand")).tags["mlflow.experimentKind"] == \
        "custom_model_development" and ensure_experiment(client, "made by hand") == old


def test_an_experiment_keeping_its_artifacts_in_dvcs_temporary_copy_is_refused(tmp_path, monkeypatch):
    from metaaug.store import ensure_experiment

    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12" / "mlruns"
    client.create_experiment("old", artifact_location=copy.as_uri())  # what a queued run used to create
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    with pytest.raises(MetaaugError, match=r"^MLflow experiment 'old' keeps its artifacts at file://.*/tmpab12/mlruns, "
                                           r"inside DVC's temporary folder, which DVC deletes; expected another"):
        ensure_experiment(client, "old")
    assert ensure_experiment(client, "new")  # created beside the store instead
