"""The policy in MLflow's model registry: a pyfunc model (metaaug/policy_model.py), one version per metatrain.

One registry (store.registry_uri) for the writer and every reader. A registered model belongs to one
experiment (tag `metaaug.experiment`, exact): another experiment's policy is never registered under it. The
aliases only move forward (a newer version number), under the store's lock, so two writers cannot leave an
older version behind. A downloaded policy is checked against the SHA-256 its version recorded.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from metaaug.datasets import dvc_md5
from metaaug.errors import MetaaugError
from metaaug.files import sha256_file
from metaaug.store import (check_reachable, existing_store, first_line, from_mlflow, import_mlflow, quiet_mlflow,
                           registry_uri, store_lock, tracking_uri)
from metaaug.tracking import PIPELINE_TAG


POLICY_ALIAS = "current"  # moves to the newest version: models:/<name>@current is "the current policy"
CHAMPION_ALIAS = "champion"  # moves to a version evaluate found not clearly worse than the best fixed arm
EXPERIMENT_TAG = "metaaug.experiment"  # on the registered model: the experiment whose policies it holds
POLICY_SHA_TAG = "metaaug.policy_sha256"  # on a version: the SHA-256 of its policy.json
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


def client():
    """An MLflow client bound to the one tracking store and the one registry (MLFLOW_REGISTRY_URI, else the
    tracking store), whatever was set earlier in the process."""
    return import_mlflow().MlflowClient(tracking_uri=tracking_uri(), registry_uri=registry_uri())


def claim_model(registry, name: str, experiment: str) -> None:
    """Model `name` exists and belongs to `experiment` (created for it if missing, a concurrent creator is
    fine); a model of another experiment, or one metaaug did not create, is refused in one line."""
    from mlflow.exceptions import MlflowException

    try:
        registry.create_registered_model(name, tags={EXPERIMENT_TAG: experiment})
        return
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    owner = registry.get_registered_model(name).tags.get(EXPERIMENT_TAG)
    if owner != experiment:
        held = f"experiment {owner[:80]!r}'s policies" if owner else "a model metaaug did not register"
        raise MetaaugError(f"registered model {name!r} in {registry_uri()} holds {held}, not experiment "
                           f"{experiment[:80]!r}'s; expected tracking.policy_model set to a name of its own")


def move_alias(registry, name: str, alias: str, version: str) -> bool:
    """Point `alias` at `version` unless it already points at a newer one (compare-and-set on the version
    number, under the store's lock): two writers finishing in either order leave it on the newer version.
    Returns whether it moved."""
    from mlflow.exceptions import MlflowException

    with store_lock(registry_uri()):
        try:
            current = int(registry.get_model_version_by_alias(name, alias).version)
        except MlflowException:  # no such alias yet
            current = 0
        if current >= int(version):
            return False
        registry.set_registered_model_alias(name, alias, str(version))
        return True


def register_policy(policy_dir: Path, name: str, description: str) -> str:
    """Log the policy in `policy_dir` (metatrain's output, already written) as a pyfunc model of the active run,
    register it as a new version of model `name` (which must belong to the run's experiment: claim_model),
    describe it and move alias `current` to it; returns the version. The version is tagged with the run, the
    pipeline, the DVC digest of `policy_dir` (matched with its dvc.lock entry) and the SHA-256 of policy.json
    (what a download is checked against). A failure is one line naming the store and the model (the output
    stays written: `dvc repro` reruns the stage)."""
    mlflow = import_mlflow()
    from metaaug import policy_bundle

    artifacts = {key: str(Path(policy_dir) / file) for key, file in POLICY_ARTIFACTS.items()
                 if (Path(policy_dir) / file).is_file()}
    run = mlflow.active_run()
    tags = {"metaaug.run": run.info.run_id, PIPELINE_TAG: run.data.tags.get(PIPELINE_TAG, "unknown"),
            "dvc.md5": dvc_md5(policy_dir), POLICY_SHA_TAG: sha256_file(Path(policy_dir) / POLICY_ARTIFACTS["policy"])}
    try:
        registry = client()
        claim_model(registry, name, registry.get_experiment(run.info.experiment_id).name)
        with quiet_mlflow(), tempfile.TemporaryDirectory() as code:  # self-contained: metaaug/policy_bundle.py
            info = mlflow.pyfunc.log_model(
                name="policy_model", python_model=str(policy_bundle.ENTRY), artifacts=artifacts,
                code_paths=[str(policy_bundle.bundle(Path(code)))], pip_requirements=policy_bundle.pip_requirements(),
                signature=_policy_signature(), input_example=policy_bundle.input_example())
            version = str(registry.create_model_version(
                name, info.model_uri, run_id=run.info.run_id, tags=tags, model_id=info.model_id,
                description=f"{description}{VERDICT_HEADING}{NOT_EVALUATED}").version)
        move_alias(registry, name, POLICY_ALIAS, version)
    except Exception as exc:
        if not from_mlflow(exc):
            raise
        raise MetaaugError(f"MLflow registry {registry_uri()}: registering the policy as a version of model {name!r} "
                           f"failed ({first_line(exc)}); expected a store with a model registry (check "
                           "MLFLOW_TRACKING_URI, MLFLOW_REGISTRY_URI and tracking.policy_model)") from None
    mlflow.set_tags({"metaaug.policy_model": f"models:/{name}/{version}"})
    return version


def logged_model_id(version) -> str | None:
    """The MLflow 3 logged model a version was registered from: its `model_id`, which MLflow's SQL registry does
    not keep, so else read from its source (`models:/m-<hex>`); None for a version registered from elsewhere."""
    source = version.source or ""
    found = source.removeprefix("models:/") if source.startswith("models:/m-") and "/" not in source[8:] else None
    return version.model_id or found


def record_verdict(name: str, metatrain_run_id: str, verdict: str, numbers: dict[str, float],
                   winner: str) -> list[str]:
    """Evaluate's answer on every version of `name` that metatrain run `metatrain_run_id` registered (the
    policy evaluate judged): the verdict into its description (replacing an earlier one), tags
    `metaaug.verdict` (`winner`) and `metaaug.gain` (learned minus the best fixed arm, points, 95 % CI),
    the headline `numbers` logged to the active run linked to the version's logged model (MLflow 3's
    model_id: the model's page lists them), and alias `champion` moved to it when learned is not clearly
    worse (the CI's upper end ≥ 0). Returns the versions updated (none when the run is unknown)."""
    if metatrain_run_id == "unknown":
        return []
    mlflow, registry = import_mlflow(), client()
    updated = []
    for version in registry.search_model_versions(f"name = '{name}' and run_id = '{metatrain_run_id}'"):
        what = (version.description or "").split(VERDICT_HEADING)[0]
        registry.update_model_version(name, version.version, description=f"{what}{VERDICT_HEADING}{verdict}")
        registry.set_model_version_tag(name, version.version, "metaaug.verdict", winner)
        if "gain" in numbers:
            registry.set_model_version_tag(name, version.version, "metaaug.gain",
                                           f"{numbers['gain']:+.2f} [{numbers['gain_low']:+.2f}, "
                                           f"{numbers['gain_high']:+.2f}]")
            if numbers["gain_high"] >= 0:
                move_alias(registry, name, CHAMPION_ALIAS, version.version)
        if numbers and logged_model_id(version):
            mlflow.log_metrics(numbers, model_id=logged_model_id(version))
        updated.append(str(version.version))
    return updated


def download_registered_policy(uri: str, destination: Path) -> Path:
    """The `policy.json` of a registered model version (`models:/<name>@<alias>` or `models:/<name>/<version>`),
    downloaded into `destination` from the one registry (store.registry_uri, which mlflow.pyfunc reads too) and
    checked against the SHA-256 the version recorded. The store must exist: a reader never creates an empty
    one. MLflow is imported only here: a core install (no `pipeline` extra) gets one line saying what to install."""
    try:
        mlflow = import_mlflow()
    except ImportError:
        raise MetaaugError(f"load_policy({uri!r}): MLflow is not installed; expected `pip install "
                           "\"metaaug[pipeline]\"` (or mlflow) to load a registered policy") from None
    store = existing_store(tracking_uri(), f"load_policy({uri!r})")
    existing_store(registry_uri(), f"load_policy({uri!r})")
    check_reachable(store)
    expected = f"a registered model version in {registry_uri()}, e.g. models:/metaaug-policy@current"
    with quiet_mlflow():
        try:
            registry = client()
            name, _, alias = uri.removeprefix("models:/").partition("@")
            if alias:
                version = registry.get_model_version_by_alias(name, alias)
            else:
                name, _, number = name.rpartition("/")
                version = registry.get_model_version(name, number)
            where = mlflow.artifacts.download_artifacts(
                artifact_uri=registry.get_model_version_download_uri(name, version.version),
                dst_path=str(destination), tracking_uri=store)
        except Exception as exc:
            if not from_mlflow(exc):
                raise
            raise MetaaugError(f"load_policy({uri!r}): {first_line(exc)}; expected {expected}") from None
    policy_file = Path(where) / "artifacts" / POLICY_ARTIFACTS["policy"]
    if not policy_file.is_file():
        raise MetaaugError(f"load_policy({uri!r}): the model has no artifacts/policy.json; expected a policy "
                           "registered by `metaaug metatrain`")
    recorded = version.tags.get(POLICY_SHA_TAG)
    if recorded != sha256_file(policy_file):
        found = f"SHA-256 {sha256_file(policy_file)[:12]}, the version records {(recorded or 'none')[:12]}"
        raise MetaaugError(f"load_policy({uri!r}): the downloaded policy.json does not match its version ({found}); "
                           f"expected the files registered by `metaaug metatrain` (version {version.version} of "
                           f"{name!r} was changed or not registered by metaaug)")
    return policy_file
