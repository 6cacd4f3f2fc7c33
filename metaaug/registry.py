"""The policy in MLflow's model registry: a pyfunc model (metaaug/policy_model.py), one version per metatrain."""

from __future__ import annotations

import tempfile
from pathlib import Path

from metaaug.datasets import dvc_md5
from metaaug.errors import MetaaugError
from metaaug.store import check_reachable, first_line, from_mlflow, import_mlflow, quiet_mlflow, tracking_uri
from metaaug.tracking import PIPELINE_TAG


POLICY_ALIAS = "current"  # moves to the newest version: models:/<name>@current is "the current policy"
POLICY_ARTIFACTS = {"policy": "policy.json", "albumentations": "policy_albumentations.json", "search": "search.json"}
VERDICT_HEADING = "\n\n#### Evaluate's verdict\n\n"  # a version's description: what the policy is, then this
NOT_EVALUATED = "Not evaluated yet: the evaluate stage writes its verdict here."


def _policy_signature():
    """uint8 (N, H, W, C) in, the same out; param `seed`."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    images = Schema([TensorSpec(np.dtype("uint8"), (-1, -1, -1, -1))])
    return ModelSignature(inputs=images, outputs=images, params=ParamSchema([ParamSpec("seed", "long", 0)]))


def register_policy(policy_dir: Path, name: str, description: str) -> str:
    """Log the policy in `policy_dir` (metatrain's output, already written) as a pyfunc model of the active run,
    register it as a new version of model `name`, describe it and move alias `current` to it; returns the
    version. The version is tagged with the run, the pipeline and the DVC digest of `policy_dir`, so it is
    matched with its dvc.lock entry; nothing is written back to the DVC output. A failure is one line naming
    the store and the model (the output stays written: `dvc repro` reruns the stage)."""
    mlflow = import_mlflow()
    from metaaug import policy_bundle

    artifacts = {key: str(Path(policy_dir) / file) for key, file in POLICY_ARTIFACTS.items()
                 if (Path(policy_dir) / file).is_file()}
    run = mlflow.active_run()
    try:
        with quiet_mlflow(), tempfile.TemporaryDirectory() as code:  # self-contained: metaaug/policy_bundle.py
            info = mlflow.pyfunc.log_model(
                name="policy_model", python_model=str(policy_bundle.ENTRY), artifacts=artifacts,
                code_paths=[str(policy_bundle.bundle(Path(code)))], pip_requirements=policy_bundle.pip_requirements(),
                signature=_policy_signature(), input_example=policy_bundle.input_example(),
                registered_model_name=name)
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        client.update_model_version(name, version, description=f"{description}{VERDICT_HEADING}{NOT_EVALUATED}")
        for key, value in {"metaaug.run": run.info.run_id, PIPELINE_TAG: run.data.tags.get(PIPELINE_TAG, "unknown"),
                           "dvc.md5": dvc_md5(policy_dir)}.items():
            client.set_model_version_tag(name, version, key, value)
        client.set_registered_model_alias(name, POLICY_ALIAS, version)
    except Exception as exc:
        if not from_mlflow(exc):
            raise
        raise MetaaugError(f"MLflow store {tracking_uri()}: registering the policy as a version of model {name!r} "
                           f"failed ({first_line(exc)}); expected a store with a model registry (check "
                           "MLFLOW_TRACKING_URI and tracking.policy_model)") from None
    mlflow.set_tags({"metaaug.policy_model": f"models:/{name}/{version}"})
    return version


def describe_policy_verdict(name: str, metatrain_run_id: str, verdict: str) -> list[str]:
    """Put evaluate's verdict into the description of every version of `name` that metatrain run
    `metatrain_run_id` registered (the policy evaluate judged), replacing an earlier verdict; returns
    the versions updated (none when the run is unknown or registered nothing)."""
    if metatrain_run_id == "unknown":
        return []
    client = import_mlflow().MlflowClient()
    updated = []
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{metatrain_run_id}'"):
        what = (version.description or "").split(VERDICT_HEADING)[0]
        client.update_model_version(name, version.version, description=f"{what}{VERDICT_HEADING}{verdict}")
        updated.append(str(version.version))
    return updated


def download_registered_policy(uri: str, destination: Path) -> Path:
    """The `policy.json` of a registered model version (`models:/<name>@<alias>` or `models:/<name>/<version>`),
    downloaded into `destination` from the store the stages log to (MLFLOW_TRACKING_URI, else
    sqlite:///mlflow.db in the working directory). MLflow is imported only here: a core install (no
    `pipeline` extra) gets one line saying what to install."""
    try:
        mlflow = import_mlflow()
    except ImportError:
        raise MetaaugError(f"load_policy({uri!r}): MLflow is not installed; expected `pip install "
                           "\"metaaug[pipeline]\"` (or mlflow) to load a registered policy") from None
    store = tracking_uri()
    check_reachable(store)
    expected = f"a registered model version in {store} (MLFLOW_TRACKING_URI), e.g. models:/metaaug-policy@current"
    with quiet_mlflow():
        try:  # a client bound to the store for the registry too: never a registry URI set earlier in the process
            client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
            name, _, alias = uri.removeprefix("models:/").partition("@")
            if alias:
                version = client.get_model_version_by_alias(name, alias).version
            else:
                name, _, version = name.rpartition("/")
            where = mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(name, version), dst_path=str(destination),
                tracking_uri=store)
        except Exception as exc:
            if not from_mlflow(exc):
                raise
            raise MetaaugError(f"load_policy({uri!r}): {first_line(exc)}; expected {expected}") from None
    policy_file = Path(where) / "artifacts" / POLICY_ARTIFACTS["policy"]
    if not policy_file.is_file():
        raise MetaaugError(f"load_policy({uri!r}): the model has no artifacts/policy.json; expected a policy "
                           "registered by `metaaug metatrain`")
    return policy_file
