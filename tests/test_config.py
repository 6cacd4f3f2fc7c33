"""params.yaml validation: defaults, unknown keys, wrong types, out-of-range values."""

import pytest
import yaml

from metaaug.config import SCHEMA, Param, defaults, load_params, validate
from metaaug.errors import MetaaugError


def test_repo_params_file_is_valid_and_matches_defaults():
    from conftest import REPO

    assert load_params(REPO / "params.yaml") == defaults()


def test_missing_file_means_defaults(tmp_path):
    assert load_params(tmp_path / "absent.yaml") == defaults()


def test_partial_file_is_merged_over_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 7\n")
    params = load_params(path)
    assert params["train"]["epochs"] == 7
    assert params["train"]["lr"] == defaults()["train"]["lr"]


@pytest.mark.parametrize("raw, fragment", [
    ({"trian": {}}, "unknown key trian"),
    ({"train": {"epoch": 3}}, "unknown key train.epoch"),
    ({"train": {"epochs": "many"}}, "train.epochs = 'many' has the wrong type"),
    ({"train": {"epochs": 0}}, "train.epochs = 0 is out of range"),
    ({"train": {"epochs": True}}, "train.epochs = True has the wrong type"),
    ({"train": {"lr": float("nan")}}, "train.lr = nan; expected a finite number"),
    ({"train": {"device": "tpu"}}, "train.device = 'tpu' is out of range; expected one of ['auto', 'cpu', 'cuda']"),
    ({"train": {"arms": ["none", "magic"]}}, "train.arms contains 'magic'"),
    ({"train": {"arms": ["none", "none"]}}, "train.arms lists an item twice"),
    ({"tasks": {"shots": -1}}, "tasks.shots = -1 is out of range"),
    ({"tasks": {"test_fraction": 1.5}}, "tasks.test_fraction = 1.5 is out of range"),
    ({"data": {"image_size": 2}}, "data.image_size = 2 is out of range"),
    ({"data": {"source": None}}, "data.source is empty"),
    ({"data": 5}, "data must be a mapping"),
])
def test_bad_values_name_the_key_in_one_line(raw, fragment):
    with pytest.raises(MetaaugError) as err:
        validate(raw)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def every_param(schema=SCHEMA, prefix=""):
    for key, spec in schema.items():
        if isinstance(spec, dict):
            yield from every_param(spec, f"{prefix}{key}.")
        else:
            yield prefix + key, spec


@pytest.mark.parametrize("key, spec", list(every_param()))
def test_every_key_rejects_a_wrong_type(key, spec: Param):
    wrong = {"x": 1} if spec.kind is not dict else 3
    raw: dict = {}
    node = raw
    *parents, leaf = key.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = wrong
    with pytest.raises(MetaaugError, match=key.replace(".", r"\.")):
        validate(raw)


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(MetaaugError, match="not valid YAML"):
        load_params(path)


def test_yaml_ints_are_accepted_for_floats(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"lr": 1}}))
    assert load_params(path)["train"]["lr"] == 1.0
