"""params.yaml validation: defaults, unknown keys, wrong types, out-of-range values."""

import pytest
import yaml

from metaaug.config import defaults, leaf_fields, load_params, validate
from metaaug.errors import MetaaugError


def test_repo_params_file_is_valid_and_matches_defaults():
    from conftest import REPO

    assert load_params(REPO / "params.yaml") == defaults()


def test_a_missing_params_file_is_an_error_not_silently_all_defaults(tmp_path):
    with pytest.raises(MetaaugError, match=r"absent.yaml: not found; expected"):
        load_params(tmp_path / "absent.yaml")


def test_partial_file_is_merged_over_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 70\n")
    params = load_params(path)
    assert params.train.epochs == 70
    assert params.train.lr == defaults().train.lr


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
    ({"train": {"arms": ["none", "learned"]}}, "train.arms lists 'learned', which is always trained"),
    ({"tasks": {"shots": -1}}, "tasks.shots = -1 is out of range"),
    ({"tasks": {"test_fraction": 1.5}}, "tasks.test_fraction = 1.5 is out of range"),
    ({"data": {"image_size": 2}}, "data.image_size = 2 is out of range"),
    ({"data": {"source": None}}, "data.source is empty"),
    ({"data": 5}, "data must be a mapping"),
    ({"train": {"arms": []}}, "train.arms is empty; expected"),
    ({"seed": 2**64}, "seed = 18446744073709551616 is out of range; expected an integer in [0, "),
    ({"seed": -1}, "seed = -1 is out of range"),
    ({"metatrain": {"ops": ["Warp"]}}, "metatrain.ops names unknown op 'Warp'; expected ops from"),
    ({"metatrain": {"anchors": ["cutmix"]}}, "metatrain.anchors contains 'cutmix'; expected items from"),
    ({"tracking": {"experiment": ""}}, "tracking.experiment is empty"),
    ({"tracking": {"policy_model": "team/policy"}}, "tracking.policy_model = 'team/policy' is not a name MLflow"),
    ({"tasks": {"target_classes": ["5", "5"]}}, "tasks.target_classes lists an item twice"),
])
def test_bad_values_name_the_key_in_one_line(raw, fragment):
    with pytest.raises(MetaaugError) as err:
        validate(raw)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", [key for key, _ in leaf_fields()])
def test_every_key_rejects_a_wrong_type(key):
    wrong = {"x": 1}
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
    assert load_params(path).train.lr == 1.0


def test_class_names_read_as_numbers_are_names(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tasks:\n  target_classes: [5, 6]\n")
    assert load_params(path).tasks.target_classes == ["5", "6"]


@pytest.mark.parametrize("text, line", [("train:\n  epochs: 3\n  epochs: 4\n", 3),
                                        ("train:\n  epochs: 3\ntrain:\n  lr: 0.1\n", 3)])
def test_a_key_given_twice_is_an_error(tmp_path, text, line):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(MetaaugError, match=rf"key '(epochs|train)' appears twice at line {line}; expected each key once"):
        load_params(path)


def test_cuda_is_refused_at_load_where_torch_sees_none(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MetaaugError, match=r"train.device = 'cuda', but torch sees no CUDA device"):
        validate({"train": {"device": "cuda"}})


def test_sections_are_read_only():
    params = defaults()
    with pytest.raises(Exception):
        params.train.epochs = 3
