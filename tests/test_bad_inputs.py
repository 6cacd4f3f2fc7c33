"""The bad-input catalogue, through the real CLI: one line `error: ...` naming the file or param and what is
expected, exit code 2, and nothing written (not even a hidden temp directory).

test_sources.py, test_config.py and test_policies.py check the messages of the library calls in detail; this
file checks the contract a user meets, one parametrised case per row of README's "Reliability" table.
"""

import io
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import REPO, tiny_config, tiny_params
from metaaug.cli import main
from metaaug.config import leaf_fields, spec
from metaaug.io import atomic_dir
from metaaug.ops import OP_TABLE_VERSION
from metaaug.tasks import prepare
from helpers import cifar_files, free_port, write_cifar_tar, write_idx

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def shared_mlflow(isolated_mlflow, tmp_path_factory, monkeypatch):
    """One MLflow store for the whole module: creating a SQLite store costs seconds, and every prepare row
    opens its run before it reads the data."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.getbasetemp() / 'bad_inputs.db'}")


def cli(capsys, *args) -> tuple[int, str]:
    """Run `metaaug <args>` in this process: (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *names: str, expected: str = "; expected") -> None:
    """Exit 2 and stderr ending in one `error:` line naming `names` and saying what is `expected`
    (before it only MLflow's INFO lines on creating a store)."""
    assert code == 2, err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert all(" INFO mlflow" in line for line in lines[:-1]), err
    assert expected in lines[-1], err
    for name in names:
        assert name in lines[-1], (name, err)


def assert_nothing_written(out_parent) -> None:
    assert not out_parent.exists() or not list(out_parent.iterdir()), list(out_parent.iterdir())


def params_file(tmp_path, **overrides):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(**overrides)))
    return path


# --- data: `metaaug prepare` ------------------------------------------------------------------------


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def folder(root, images: dict[str, dict[str, bytes]]):
    """An image folder: {class: {file name: bytes}}."""
    for cls, files in images.items():
        (root / cls).mkdir(parents=True)
        for name, data in files.items():
            (root / cls / name).write_bytes(data)
    return root


GRAY = png(np.zeros((6, 6), np.uint8))


def folder_source(root, images):
    return {"data.source": f"imagefolder:{folder(root, images)}", "tasks.target_classes": None}


def missing_path(tmp):
    return {"data.source": f"imagefolder:{tmp / 'nope'}"}, [str(tmp / "nope"), "does not exist"]


def corrupt_image(tmp):
    root = tmp / "imgs"
    return folder_source(root, {"a": {"x.png": GRAY}, "b": {"bad.jpg": b"not a jpeg"}}), [str(root / "b" / "bad.jpg")]


def truncated_image(tmp):
    root = tmp / "imgs"
    cut = png(RNG.integers(0, 256, (64, 64, 3), np.uint8))[:300]
    return folder_source(root, {"a": {"x.png": GRAY}, "b": {"cut.png": cut}}), [str(root / "b" / "cut.png")]


def truncated_idx(tmp):
    root = tmp / "idx"
    root.mkdir()
    write_idx(root, "train", np.zeros((4, 5, 5), np.uint8), np.array([0, 1, 0, 1], np.uint8), gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    return {"data.source": f"idx:{root}"}, [str(path), "truncated"]


def corrupt_idx_gzip(tmp):
    root = tmp / "idx"
    root.mkdir()
    write_idx(root, "train", np.zeros((4, 5, 5), np.uint8), np.array([0, 1, 0, 1], np.uint8), gz=True)
    path = root / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:12])
    return {"data.source": f"idx:{root}"}, [str(path), "IDX"]


def truncated_archive(tmp):
    folder_name, files, _, _ = cifar_files(hundred=False)
    path = tmp / "cifar-10-python.tar.gz"
    write_cifar_tar(path, folder_name, files)
    path.write_bytes(path.read_bytes()[:-400])
    return {"data.source": f"cifar:{path}"}, [str(path), "cifar-10-python.tar.gz"]


def empty_class(tmp):
    root = tmp / "imgs"
    params = folder_source(root, {"a": {"x.png": GRAY}, "b": {"y.png": GRAY}, "c": {"notes.txt": b"no images"}})
    return params, [str(root / "c"), "holds no images"]


def single_class(tmp):
    root = tmp / "imgs"
    return folder_source(root, {"only": {"x.png": GRAY, "y.png": GRAY}}), [str(root), "at least 2"]


def too_few_shots(tmp):
    root = tmp / "imgs"
    images = {cls: {f"{i}.png": GRAY for i in range(4)} for cls in "abcd"}
    params = {**folder_source(root, images), "tasks.target_classes": ["c", "d"], "tasks.shots": 3}
    return params, ["tasks.shots = 3", "'c' has only 2"]


def mixed_sizes(tmp):
    root = tmp / "imgs"
    other = png(np.zeros((9, 4), np.uint8))
    return folder_source(root, {"a": {"x.png": GRAY}, "b": {"y.png": other}}), [str(root / "b" / "y.png"),
                                                                                "data.image_size"]


def npz_source(tmp, images, labels=(0, 1)):
    path = tmp / "data.npz"
    np.savez(path, images=images, labels=np.array(labels))
    return {"data.source": f"npz:{path}", "tasks.target_classes": None}, path


def npz_two_channels(tmp):
    params, path = npz_source(tmp, np.zeros((2, 4, 4, 2), np.uint8))
    return params, [str(path), "C 1 or 3"]


def npz_nan(tmp):
    params, path = npz_source(tmp, np.array([[[0.5, np.nan]], [[0.1, 0.2]]]))
    return params, [str(path), "NaN"]


def npz_inf(tmp):
    params, path = npz_source(tmp, np.array([[[0.5, -np.inf]], [[0.1, 0.2]]]))
    return params, [str(path), "inf"]


def unknown_source_kind(tmp):
    return {"data.source": "parquet:/x"}, ["data.source", "imagefolder:<path>"]


def unknown_target_folder_class(tmp):
    root = tmp / "imgs"
    folder(root, {"a": {"x.png": GRAY}, "b": {"y.png": GRAY}})
    return {"tasks.target_source": f"imagefolder:{root}", "tasks.target_classes": ["a", "zebra"]}, [str(root),
                                                                                                 "'zebra'"]


def empty_experiment(tmp):
    return {"tracking.experiment": ""}, ["tracking.experiment"]


DATA_ROWS = [missing_path, corrupt_image, truncated_image, truncated_idx, corrupt_idx_gzip, truncated_archive,
             empty_class, single_class, too_few_shots, mixed_sizes, npz_two_channels, npz_nan, npz_inf,
             unknown_source_kind, unknown_target_folder_class, empty_experiment]


@pytest.mark.parametrize("row", DATA_ROWS, ids=lambda row: row.__name__)
def test_bad_data_stops_prepare_in_one_line(row, tmp_path, capsys):
    overrides, names = row(tmp_path)
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path, **overrides),
                    "--out", tmp_path / "out" / "prepared")
    assert_one_line_error(code, err, *names)
    assert_nothing_written(tmp_path / "out")


def test_mixed_channel_counts_are_promoted_to_rgb(tmp_path, capsys):
    """Not an error: one colour image in a gray folder turns the whole set RGB (gray replicated)."""
    rgb = png(np.full((6, 6, 3), 90, np.uint8))
    images = {cls: {f"{i}.png": GRAY for i in range(3)} for cls in "abcd"}
    images["d"]["colour.png"] = rgb
    params = {**folder_source(tmp_path / "imgs", images), "tasks.target_classes": ["c", "d"], "tasks.shots": 1,
              "tasks.splits": 1}
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path, **params), "--out", tmp_path / "prepared")
    assert code == 0, err
    assert np.load(tmp_path / "prepared" / "target_images.npy").shape[1:] == (6, 6, 3)


# --- policy files: `metaaug augment` -------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    params = tiny_config()
    out = tmp_path_factory.mktemp("bad_inputs") / "prepared"
    with atomic_dir(out) as tmp:
        prepare(params.data, params.tasks, params.seed, tmp)
    return out


GOOD_POLICY = {"format_version": 1, "op_table_version": OP_TABLE_VERSION, "provenance": {},
               "policy": {"name": "p", "ops": ["Rotate"], "weights": [1], "prob": [1], "mag_low": [0],
                          "mag_high": [1], "layers": 1}}


@pytest.mark.parametrize("doc, names, expected", [
    ({**GOOD_POLICY, "policy": {**GOOD_POLICY["policy"], "ops": ["Warp"]}}, ["unknown op 'Warp'"], "known ops: "),
    ({**GOOD_POLICY, "format_version": 2}, ["format_version 2 is newer"], "; expected <= 1"),
], ids=["unknown_op", "newer_format_version"])
def test_bad_policy_file_stops_augment_in_one_line(doc, names, expected, prepared, tmp_path, capsys):
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "policy.json").write_text(json.dumps(doc))
    code, err = cli(capsys, "augment", "--params", params_file(tmp_path), "--prepared", prepared,
                    "--policy", policy, "--out", tmp_path / "out" / "augmented")
    assert_one_line_error(code, err, str(policy / "policy.json"), *names, expected=expected)
    assert_nothing_written(tmp_path / "out")


# --- params.yaml ---------------------------------------------------------------------------------------


def out_of_range_values():
    """(key, value) for every bounded key: just below its low end, just above its high end, outside its choices."""
    for key, field in leaf_fields():
        s = spec(field)
        integer = s.kind is int
        if s.low is not None:
            yield key, s.low - 1 if integer else (s.low / 2 if s.low > 0 else -1.0)
        if s.high is not None:
            yield key, s.high + 1 if integer else s.high * 2
        if s.choices is not None:
            yield key, ["nonsense"] if s.kind is list else "nonsense"


@pytest.mark.parametrize("key, value", [*out_of_range_values(), ("train.epochs", "many"), ("data", 5)])
def test_bad_params_stop_in_one_line(key, value, tmp_path, capsys):
    """Every bounded key out of range (test_config.py checks every key's wrong type at the library level)."""
    raw = tiny_params()
    section, _, leaf = key.partition(".")
    if leaf:
        raw[section][leaf] = value
    else:
        raw[section] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = cli(capsys, "prepare", "--params", path, "--out", tmp_path / "out" / "prepared")
    assert_one_line_error(code, err, "params.yaml", key)
    assert_nothing_written(tmp_path / "out")


# --- MLflow tracking server ------------------------------------------------------------------------------


def test_refused_tracking_server_fails_fast_in_a_real_process(tmp_path):
    """A real `python -m metaaug` process: exit code 2, one line on stderr, seconds not minutes."""
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "metaaug", "prepare", "--params", params_file(tmp_path),
                          "--out", tmp_path / "out" / "prepared"], capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "MLFLOW_TRACKING_URI": uri}, timeout=120)
    seconds = time.monotonic() - start
    assert_one_line_error(out.returncode, out.stderr, uri, "unreachable")
    assert seconds < 30, seconds  # mostly the interpreter importing torch
    assert_nothing_written(tmp_path / "out")


def test_silent_tracking_server_times_out_in_seconds(tmp_path, capsys, monkeypatch):
    """A server that accepts connections and never answers (a hung or firewalled host): no hang."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        code, err = cli(capsys, "prepare", "--params", params_file(tmp_path), "--out", tmp_path / "out" / "prepared")
        seconds = time.monotonic() - start
    assert_one_line_error(code, err, uri, "timed out")
    assert seconds < 10, seconds
    assert_nothing_written(tmp_path / "out")
