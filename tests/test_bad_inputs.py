"""The bad-input catalogue, through the real CLI: one line `error: ...` naming the file or param and what is
expected, exit code 2, and nothing written (not even a hidden temp directory).

test_sources.py, test_config.py and test_policies.py check the messages of the library calls in detail; this
file checks the contract a user meets, one parametrised case per row of the tables in docs/reliability.md.
"""

import io
import json
import os
import shutil
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
from metaaug.ops import OP_TABLE_VERSION
from metaaug.ownership import write_marker
from metaaug.tasks import prepare
from helpers import STAGES, atomic_dir, cifar_files, free_port, write_cifar_tar, write_idx

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
    images = {cls: {f"{i}.png": png(np.full((6, 6), 10 * i + 40 * c, np.uint8)) for i in range(3)}
              for c, cls in enumerate("abcd")}  # distinct images: one image under two classes would be a leak
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


def policy_output(root, doc: dict):
    """A metatrain output (marked, so it is read) holding `doc` as its policy.json."""
    policy = root / "policy"
    policy.mkdir()
    (policy / "policy.json").write_text(json.dumps(doc))
    write_marker(policy, "metatrain")
    return policy


@pytest.mark.parametrize("doc, names, expected", [
    ({**GOOD_POLICY, "policy": {**GOOD_POLICY["policy"], "ops": ["Warp"]}}, ["unknown op 'Warp'"], "known ops: "),
    ({**GOOD_POLICY, "format_version": 2}, ["format_version 2 is newer"], "; expected <= 1"),
], ids=["unknown_op", "newer_format_version"])
def test_bad_policy_file_stops_augment_in_one_line(doc, names, expected, prepared, tmp_path, capsys):
    policy = policy_output(tmp_path, doc)
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


# --- outputs: only ever replaced where metaaug wrote them --------------------------------------------------------
#
# Every row: exit 2, one `error:` line, and the whole project tree (user files, inputs, previous outputs, hidden
# entries) byte for byte as it was, with no temp left. The project is a real tiny pipeline run through the CLI.


def tree(root) -> dict:
    """Every entry under `root` (hidden ones too) -> its bytes, '<dir>', or '-> target' for a link; the MLflow
    store is left out (a refused stage may still have recorded a failed run)."""
    found = {}
    for here, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(here, name)
            rel = os.path.relpath(path, root)
            if rel.split(os.sep)[0] in ("mlflow.db", "mlflow.db.lock", "mlruns"):  # the lock records its holder
                continue
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = "<dir>"
            else:
                with open(path, "rb") as fh:
                    found[rel] = fh.read()
    return found


def run_pipeline(project, params: dict) -> None:
    """prepare -> evaluate through the CLI in `project`, at the default output paths (train: once per arm)."""
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
        for stage in STAGES:
            for args in ([["--arm", arm] for arm in params["train"]["arms"]] if stage == "train" else [[]]):
                with pytest.raises(SystemExit) as exit:
                    main([stage, *args])
                assert exit.value.code == 0, stage


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny project after a whole pipeline, plus `other/`: a prepared set of another shape (16x16 digits)
    and `same_shape/`: one of the same shape from another seed."""
    root = tmp_path_factory.mktemp("built")
    run_pipeline(root, tiny_params())
    other = tiny_params(**{"data.image_size": 16})
    (root / "other.yaml").write_text(yaml.safe_dump(other))
    (root / "same.yaml").write_text(yaml.safe_dump({**tiny_params(), "seed": 7}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        for params, out in (("other.yaml", "other"), ("same.yaml", "same_shape")):
            with pytest.raises(SystemExit) as exit:
                main(["prepare", "--params", params, "--out", out])
            assert exit.value.code == 0
    return root


@pytest.fixture
def project(built, tmp_path, monkeypatch):
    """A private copy of the built project, as the working directory, with a user's own folder and file."""
    root = tmp_path / "project"
    shutil.copytree(built, root, symlinks=True)
    (root / "mydata").mkdir()
    (root / "mydata" / "keep.txt").write_text("the user's own file\n")
    (root / "notes.txt").write_text("a user's file\n")
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return root


def refused(capsys, root, *args, names=()) -> str:
    """Run the CLI; assert exit 2, one line naming `names`, and the project tree unchanged; return the line."""
    before = tree(root)
    code, err = cli(capsys, *args)
    assert_one_line_error(code, err, *names)
    assert tree(root) == before
    return err.splitlines()[-1]


OUTPUT_ROWS = {  # (stage and args, the names the line must hold): anything at an output path metaaug did not write
    "non_metaaug_folder": (["prepare", "--out", "mydata"], ["mydata"]),
    "file_where_folder_expected": (["prepare", "--out", "notes.txt"], ["notes.txt", "is a file"]),
    "working_directory": (["prepare", "--out", "."], ["working directory"]),
    "parent_of_working_directory": (["prepare", "--out", ".."], ["working directory"]),
    "absolute_working_directory": (["metatrain", "--out", "{root}"], ["working directory"]),
    "parent_of_inputs": (["metatrain", "--out", "data"], ["data"]),
    "input_itself": (["metatrain", "--out", "data/prepared"], ["data/prepared", "output of `metaaug prepare`"]),
    "inside_an_input": (["augment", "--out", "data/prepared/augmented"], ["lies inside"]),
    "another_stage_output": (["augment", "--out", "models/policy"], ["models/policy"]),
    "foreign_file_in_own_output": (["prepare"], ["data/prepared", "user.txt"]),
    "parent_is_a_file": (["prepare", "--out", "notes.txt/prepared"], ["notes.txt", "is a file"]),
    "symlink_to_folder": (["prepare", "--out", "link"], ["link", "symbolic link"]),
    "plots_at_reports": (["evaluate", "--plots", "reports"], ["reports"]),
    "plots_and_reports_one_path": (["evaluate", "--plots", "new", "--reports", "new"], ["new"]),
    "metrics_at_params_file": (["evaluate", "--metrics", "params.yaml"], ["params.yaml"]),
    "metrics_at_a_folder": (["evaluate", "--metrics", "mydata"], ["mydata", "is a folder"]),
    "metrics_inside_an_output": (["evaluate", "--metrics", "models/policy/search.json"], ["lies inside"]),
    "train_at_augmented": (["train", "--arm", "none", "--out", "data/augmented"], ["data/augmented"]),
    "timing_at_a_user_file": (["metatrain", "--timing", "notes.txt"], ["notes.txt", "timing output"]),
    "timing_inside_an_output": (["train", "--arm", "none", "--timing", "models/policy/train.json"], ["lies inside"]),
}


@pytest.mark.parametrize("row", OUTPUT_ROWS, ids=str)
def test_output_path_metaaug_did_not_write_is_left_untouched(row, project, capsys):
    args, names = OUTPUT_ROWS[row]
    (project / "data" / "prepared" / "user.txt").write_text("mine\n") if row == "foreign_file_in_own_output" else None
    (project / "link").symlink_to(project / "mydata") if row == "symlink_to_folder" else None
    refused(capsys, project, *[a.format(root=project) for a in args], names=names)


def test_own_and_empty_outputs_are_replaced_a_look_alike_is_refused(project, capsys):
    """The other side of the rule: metaaug's own output (with its marker) and an empty folder are written; a
    folder that merely looks like an output (its files, no marker) is refused and left untouched, and the
    user's files beside them are not touched."""
    from metaaug.ownership import MARKER

    look_alike = project / "look_alike"
    shutil.copytree(project / "data" / "prepared", look_alike)
    (look_alike / MARKER).unlink()
    (project / "empty").mkdir()
    for out in ("data/prepared", "empty"):
        code, err = cli(capsys, "prepare", "--out", out)
        assert code == 0, err
        assert (project / out / MARKER).is_file()
    refused(capsys, project, "prepare", "--out", "look_alike", names=["look_alike", f"no {MARKER}"])
    assert (project / "mydata" / "keep.txt").read_text() == "the user's own file\n"
    assert not [p for p in project.rglob(".*.tmp-*")]


# --- sources compared by what they are -------------------------------------------------------------------


def two_folders(root):
    """Image folder with 6 classes of distinct random images."""
    rng = np.random.default_rng(1)
    return folder(root, {c: {f"{i}.png": png(rng.integers(0, 256, (6, 6), np.uint8)) for i in range(6)}
                         for c in "abcdef"})


@pytest.mark.parametrize("spelling", ["trailing_slash", "dot_slash", "symlink", "relative", "double_slash"])
def test_same_source_spelled_differently_never_leaks_the_target(spelling, tmp_path, capsys, monkeypatch):
    """A target named by another spelling of data.source is the same source: its classes are held out."""
    monkeypatch.chdir(tmp_path)
    root = two_folders(tmp_path / "imgs")
    (tmp_path / "link").symlink_to(root)
    target = {"trailing_slash": f"{root}/", "dot_slash": "./imgs", "symlink": str(tmp_path / "link"),
              "relative": "imgs", "double_slash": str(root).replace("/imgs", "//imgs")}[spelling]
    params = {"data.source": f"imagefolder:{root}", "tasks.target_source": f"imagefolder:{target}",
              "tasks.target_classes": ["e", "f"], "tasks.shots": 2}
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path, **params), "--out", tmp_path / "prepared")
    assert code == 0, err
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    assert manifest["meta"]["classes"] == ["a", "b", "c", "d"] and manifest["target"]["classes"] == ["e", "f"]


def test_target_images_inside_meta_training_stop_prepare(tmp_path, capsys):
    """The rule behind it: a copy of the source as the target (another path, same images) stops, by content."""
    root = two_folders(tmp_path / "imgs")
    shutil.copytree(root, tmp_path / "copy")
    params = {"data.source": f"imagefolder:{root}", "tasks.target_source": f"imagefolder:{tmp_path / 'copy'}",
              "tasks.target_classes": ["e", "f"], "tasks.shots": 2}
    before = tree(tmp_path)
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path, **params), "--out", tmp_path / "out")
    assert_one_line_error(code, err, "12 of 12 target images", "disjoint")
    assert {k: v for k, v in tree(tmp_path).items() if k != "params.yaml"} == \
        {k: v for k, v in before.items() if k != "params.yaml"}


# --- stage inputs checked against each other ----------------------------------------------------------------


MISMATCH_ROWS = {  # a CLI stage given inputs that do not belong together: (args, names)
    "evaluate_prepared_of_other_shape": (["evaluate", "--prepared", "other"],
                                         ["models/downstream", "another prepare output than other"]),
    "evaluate_prepared_of_same_shape": (["evaluate", "--prepared", "same_shape"],
                                        ["models/downstream", "another prepare output than same_shape"]),
    "train_augmented_of_other_prepared": (["train_learned", "--prepared", "same_shape", "--out", "models/new"],
                                          ["another prepare output than same_shape"]),  # augmented (policies: portable)
    "evaluate_learned_is_prepared": (["evaluate", "--learned", "data/prepared"],
                                     ["data/prepared", "output of `metaaug prepare`"]),
    "evaluate_downstream_is_prepared": (["evaluate", "--downstream", "data"],  # data/prepared is no arm's folder
                                        ["data/none", "does not exist", "output of `metaaug train`"]),
    "train_prepared_is_policy": (["train", "--arm", "none", "--prepared", "models/policy", "--out", "models/new"],
                                 ["models/policy", "output of `metaaug metatrain`"]),
    "augment_prepared_is_augmented": (["augment", "--prepared", "data/augmented", "--out", "data/new"],
                                      ["data/augmented", "output of `metaaug augment`"]),
    "metatrain_prepared_missing": (["metatrain", "--prepared", "nowhere", "--out", "models/new"],
                                   ["nowhere", "manifest.json missing"]),
}


@pytest.mark.parametrize("row", MISMATCH_ROWS, ids=str)
def test_mismatched_stage_inputs_stop_in_one_line(row, project, capsys):
    args, names = MISMATCH_ROWS[row]
    refused(capsys, project, *args, names=names)


@pytest.mark.parametrize("stage, args, unmarked", [
    ("metatrain", ["--out", "models/new"], "data/prepared"),
    ("augment", ["--out", "data/new"], "models/policy"),
    ("train", ["--arm", "none", "--out", "models/new"], "models/learner"),
    ("train_learned", ["--out", "models/new"], "data/augmented"),
    ("evaluate", ["--metrics", "m.json"], "models/downstream/none"),
    ("evaluate", ["--metrics", "m.json"], "models/downstream/learned"),
])
def test_an_input_without_its_marker_is_refused(stage, args, unmarked, project, capsys):
    """A folder that holds an output's files but no marker (copied without it, or from before markers): nothing
    vouches for its files, so the stage stops in one line naming it, before reading anything."""
    from metaaug.ownership import MARKER

    (project / unmarked / MARKER).unlink()
    refused(capsys, project, stage, *args, names=[unmarked, f"has no {MARKER}"])


# --- MLflow and its store ---------------------------------------------------------------------------------------


class NotMlflow(__import__("http.server").server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>hello</html>")

    def log_message(self, *args):
        pass


@pytest.fixture
def not_mlflow():
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def deleted_experiment(root):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("gone"))
    return None, {"tracking.experiment": "gone"}, ["gone", "deleted"]


STORE_ROWS = {  # root -> (MLFLOW_TRACKING_URI or None for the project's store, param overrides, names)
    "corrupt_sqlite": lambda r: ((r / "bad.db").write_bytes(b"not a database" * 99) and f"sqlite:///{r}/bad.db",
                                 {}, ["bad.db", "not a database"]),
    "sqlite_path_is_folder": lambda r: (f"sqlite:///{r}/mydata", {}, ["mydata", "is a folder"]),
    "sqlite_unopenable_path": lambda r: ("sqlite:////proc/metaaug.db", {}, ["/proc"]),
    "sqlite_not_a_file": lambda r: ("sqlite:////dev/null", {}, ["/dev/null"]),
    "sqlite_folder_missing": lambda r: (f"sqlite:///{r}/nowhere/x.db", {}, ["nowhere"]),
    "unsupported_scheme": lambda r: ("foo://bar", {}, ["foo://bar"]),
    "missing_db_driver": lambda r: ("postgresql://user@localhost/db", {}, ["postgresql://", "psycopg"]),
    "deleted_experiment": deleted_experiment,
    "experiment_name_too_long": lambda r: (None, {"tracking.experiment": "x" * 600},
                                           ["tracking.experiment", "1-500 printable characters"]),
}


@pytest.mark.parametrize("row", STORE_ROWS, ids=str)
def test_store_failures_stop_in_seconds_before_any_output(row, project, capsys, monkeypatch):
    uri, overrides, names = STORE_ROWS[row](project)
    if uri is not None:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    params = project / "p.yaml"
    params.write_text(yaml.safe_dump(tiny_params(**overrides)))
    start = time.monotonic()
    refused(capsys, project, "prepare", "--params", params, names=names)
    assert time.monotonic() - start < 20


def test_locked_store_stops_in_seconds(project, capsys, monkeypatch):
    import sqlite3

    from metaaug import store

    monkeypatch.setattr(store, "LOCK_WAIT_S", 1)
    db = project / "locked.db"
    holder = sqlite3.connect(db)
    holder.execute("create table t(x)")
    holder.commit()
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    try:
        line = refused(capsys, project, "prepare", names=["locked.db", "locked"])
    finally:
        holder.close()
    assert "locked" in line


def test_http_service_that_is_not_mlflow(project, capsys, monkeypatch, not_mlflow):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", not_mlflow)
    refused(capsys, project, "prepare", names=[not_mlflow, "not as an MLflow tracking server"])


def test_class_names_mlflow_rejects_as_metric_keys_are_logged(tmp_path, capsys):
    """Not an error: any class name is logged as it is (per-class counts in class_counts.json),
    and a `$` in one is drawn as it is in the sample grids (matplotlib's math parser would crash on it)."""
    import mlflow

    rng = np.random.default_rng(2)
    names = ["a,b", "c+d", "e(f)", "g?h", "ü/..", "a$^$b", "x" * 250]
    root = folder(tmp_path / "imgs", {n.replace("/", "|"): {f"{i}.png": png(rng.integers(0, 256, (6, 6), np.uint8))
                                                               for i in range(6)} for n in names})
    params = {"data.source": f"imagefolder:{root}", "tasks.target_classes": ["a,b", "c+d"], "tasks.shots": 2}
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path, **params), "--out", tmp_path / "prepared")
    assert code == 0, err
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.search_runs([client.get_experiment_by_name("metaaug").experiment_id],
                                            order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "FINISHED"
    counts = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/class_counts.json")
    assert sorted([*counts["meta"], *counts["target"]]) == sorted(n.replace("/", "|") for n in names)  # folder names


def test_killed_stage_run_is_marked_failed_by_the_next_run(project):
    """A SIGKILLed stage cannot end its MLflow run; the next run of that stage marks it FAILED (its process,
    recorded in tag metaaug.process, is gone)."""
    import mlflow

    from metaaug.publish import KILL_ENV

    env = {**os.environ, KILL_ENV: "again"}
    killed = subprocess.run([sys.executable, "-m", "metaaug", "prepare", "--out", "again"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    done = subprocess.run([sys.executable, "-m", "metaaug", "prepare", "--out", "again"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("metaaug").experiment_id],
                              "tags.`metaaug.stage` = 'prepare'", order_by=["attributes.start_time DESC"])
    assert [r.info.status for r in runs[:2]] == ["FINISHED", "FAILED"]
    assert not [r for r in runs if r.info.status == "RUNNING"]


# --- the file system ------------------------------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (needs root, e.g. in a container); yields (path, remount(options))."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    remount = lambda options: subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)  # noqa
    yield mount, remount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_leaves_previous_output_and_no_temp(project, tmpfs, capsys):
    mount, _ = tmpfs
    shutil.copytree(project / "data" / "prepared", mount / "prepared")
    filler = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk, then free 32 KiB: less
    try:                                                            # than prepare writes
        while os.write(filler, b"\0" * 4096):
            pass
    except OSError:
        pass
    os.close(filler)
    os.truncate(mount / "filler", (mount / "filler").stat().st_size - 32 * 1024)
    before = tree(mount)
    code, err = cli(capsys, "prepare", "--out", mount / "prepared")
    assert_one_line_error(code, err, str(mount / "prepared"), "free space")
    assert tree(mount) == before


def test_read_only_file_system_leaves_previous_output(project, tmpfs, capsys):
    mount, remount = tmpfs
    shutil.copytree(project / "data" / "prepared", mount / "prepared")
    remount("ro")
    before = tree(mount)
    code, err = cli(capsys, "prepare", "--out", mount / "prepared")
    assert_one_line_error(code, err, str(mount), "read-only file system")
    assert tree(mount) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_unwritable_folder(project, capsys):
    (project / "locked").mkdir(mode=0o555)
    refused(capsys, project, "prepare", "--out", "locked/prepared", names=["locked", "not writable"])


# --- integrity: one path per output, markers that prove ownership, inputs read as written --------------------------
#
# The rules (metaaug/ownership.py, runner.stage_run; docs/integrity.md): the path checked is the path written; an output
# is replaced only while its files match its marker; an input is read only while its files match its marker; outputs
# are published only after the MLflow run recorded them.


def test_tilde_path_is_the_home_folder_for_check_and_write(project, capsys, monkeypatch):
    """`--out '~/prepared'` (quoted, as a script passes it) writes $HOME/prepared; a folder literally named
    `~` in the working directory is never touched."""
    home = project.parent / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    (project / "~" / "prepared").mkdir(parents=True)
    (project / "~" / "prepared" / "keep.txt").write_text("mine\n")
    code, err = cli(capsys, "prepare", "--out", "~/prepared")
    assert code == 0, err
    assert (home / "prepared" / "manifest.json").is_file()
    assert (project / "~" / "prepared" / "keep.txt").read_text() == "mine\n"
    home_before = tree(home)
    refused(capsys, project, "metatrain", "--timing", "~/prepared", names=["~/prepared", "is a folder"])
    assert tree(home) == home_before


def test_folder_named_like_a_stale_temp_is_not_deleted(project, capsys):
    """Temps are recognised by their temp marker, never by their name alone."""
    mine = project / "data" / ".prepared.tmp-999999999-x"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine\n")
    code, err = cli(capsys, "prepare")
    assert code == 0, err
    assert (mine / "keep.txt").read_text() == "mine\n"


def edit_report(root):
    with open(root / "reports" / "report.md", "a") as fh:
        fh.write("\nmy own notes\n")


def edit_metrics(root):
    doc = json.loads((root / "metrics.json").read_text())
    doc[next(iter(doc))] = 100.0
    (root / "metrics.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")  # as metaaug formats it


def fake_marker(root):
    from metaaug.ownership import MARKER

    (root / "mine").mkdir()
    (root / "mine" / "data.txt").write_text("the user's data\n")
    (root / "mine" / MARKER).write_text(json.dumps({"format": 1, "kind": "prepare", "inputs": {},
                                                    "files": {"data.txt": "0" * 64}}))


OWNERSHIP_ROWS = {  # (damage, stage and args, names): an output changed since metaaug wrote it is never replaced
    "hand_edited_report": (edit_report, ["evaluate"], ["reports", "report.md", "modified since metaaug wrote it"]),
    "hand_edited_metrics": (edit_metrics, ["evaluate"], ["metrics.json", "modified since metaaug wrote it"]),
    "fake_marker_on_user_folder": (fake_marker, ["prepare", "--out", "mine"], ["mine", "data.txt", "modified"]),
    "train_timing_at_evaluate_metrics": (lambda r: None, ["train", "--arm", "none", "--out", "models/new", "--timing",
                                                          "metrics.json"],
                                         ["metrics.json", "metrics output of `metaaug evaluate`"]),
    "metatrain_timing_at_train_timing": (lambda r: None, ["metatrain", "--out", "models/new", "--timing",
                                                          "timings/train@none.json"],
                                         ["timing output of `metaaug train`"]),
}


@pytest.mark.parametrize("row", OWNERSHIP_ROWS, ids=str)
def test_outputs_changed_since_metaaug_wrote_them_are_kept(row, project, capsys):
    damage, args, names = OWNERSHIP_ROWS[row]
    (project / "timings").mkdir(exist_ok=True)
    if row == "metatrain_timing_at_train_timing":
        cli(capsys, "train", "--arm", "none", "--out", "models/t", "--timing", "timings/train@none.json")
    damage(project)
    refused(capsys, project, *args, names=names)


def flip_bank(root):
    path = root / "data" / "augmented" / "images.npy"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))


def zero_test_set(root):
    path = root / "data" / "prepared" / "target_images.npy"
    np.save(path, np.zeros_like(np.load(path)))


def other_seed_under_old_marker(root):
    for f in (root / "same_shape").iterdir():
        if f.suffix in (".npy", ".json") and not f.name.startswith("."):
            shutil.copy(f, root / "data" / "prepared" / f.name)


def other_learner(root):
    """learner.json naming the other learner, read by a fixed arm's train (train.model: auto)."""
    path = root / "models" / "learner" / "learner.json"
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "model": {"small_cnn": "resnet", "resnet": "small_cnn"}[doc["model"]]}))


def truncate(rel):
    def damage(root):
        path = root / rel
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    damage.__name__ = f"truncate {rel}"
    return damage


INPUT_ROWS = {  # (damage, stage and args, names): an input whose files differ from its marker is never read
    "flipped_bank_bytes": (flip_bank, ["train_learned", "--out", "models/new"],
                           ["data/augmented", "images.npy", "modified"]),
    "zeroed_test_set": (zero_test_set, ["evaluate", "--metrics", "m.json", "--plots", "p", "--reports", "r"],
                        ["data/prepared", "target_images.npy", "modified"]),
    "other_seed_under_old_marker": (other_seed_under_old_marker, ["metatrain", "--out", "models/new"],
                                    ["data/prepared", "modified"]),
    "truncated_manifest": (truncate("data/prepared/manifest.json"), ["augment", "--out", "data/new"],
                           ["data/prepared", "manifest.json", "modified"]),
    "truncated_checkpoint_json": (truncate("models/policy/checkpoint.json"), ["augment", "--out", "data/new"],
                                  ["models/policy", "checkpoint.json", "modified"]),
    "truncated_results": (truncate("models/downstream/none/results.json"), ["evaluate", "--metrics", "m.json"],
                          ["models/downstream/none", "results.json", "modified"]),
    "other_learner": (other_learner, ["train", "--arm", "none", "--out", "models/new"],
                      ["models/learner", "learner.json", "modified"]),
    "truncated_marker": (truncate("data/prepared/.metaaug-output.json"), ["metatrain", "--out", "models/new"],
                         ["data/prepared", "not a readable marker"]),
}


@pytest.mark.parametrize("row", INPUT_ROWS, ids=str)
def test_inputs_are_verified_by_content_and_damage_stops_in_one_line(row, project, capsys):
    """Inputs are hashed against their markers: damage stops in one line naming the file."""
    damage, args, names = INPUT_ROWS[row]
    damage(project)
    refused(capsys, project, *args, names=names)


def test_truncated_evaluation_json_stops_results_in_one_line(project, capsys):
    truncate("reports/evaluation.json")(project)
    refused(capsys, project, "results", names=["evaluation.json", "not valid JSON"])
    (project / "reports" / "evaluation.json").write_text('{"arms": 3}')
    refused(capsys, project, "results", names=["evaluation.json", "expected the output of"])


def test_truncated_search_checkpoint_stops_metatrain_in_one_line(project, capsys):
    from metaaug.config import load_params
    from metaaug.ownership import verify_input
    from metaaug.stages.metatrain import checkpoint_path

    import torch

    path = checkpoint_path(project / "models" / "new", load_params(project / "params.yaml"),
                           verify_input(project / "data" / "prepared", "prepare"), torch.device("cpu"))
    path.write_text('{"method": ')
    refused(capsys, project, "metatrain", "--out", "models/new", names=[path.name, "delete it to restart"])


# --- the stage runner's order --------------------------------------------------------------------------------------


def test_missing_data_path_fails_before_any_store_is_made(tmp_path, capsys, monkeypatch):
    db = tmp_path / "fresh.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    start = time.monotonic()
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path, **{"data.source": f"idx:{tmp_path}/no"}),
                    "--out", tmp_path / "out")
    assert time.monotonic() - start < 2
    assert_one_line_error(code, err, f"{tmp_path}/no", "does not exist")
    assert not db.exists() and not (tmp_path / "out").exists()


def test_deleted_splits_experiment_stops_train_before_any_work(project, capsys):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    splits = client.get_experiment_by_name("metaaug-splits")
    client.delete_experiment(splits.experiment_id)
    refused(capsys, project, "train", "--arm", "none", names=["metaaug-splits", "deleted", "restore"])


def test_tracking_failure_keeps_previous_output_and_marks_the_run_failed(project, capsys, monkeypatch):
    """The artifact store fails after the output is computed: the output is not published, the run is FAILED."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'fresh.db'}")
    shutil.rmtree(project / "mlruns", ignore_errors=True)
    (project / "mlruns").write_text("a file where MLflow keeps its artifacts\n")
    before = tree(project)
    code, err = cli(capsys, "prepare")
    assert_one_line_error(code, err, "mlruns")
    after = tree(project)  # the new store and its lock beside it (metaaug.store.lock_path), nothing else
    assert after == {**before, "fresh.db": after["fresh.db"], "fresh.db.lock": after["fresh.db.lock"]}
    client = mlflow.MlflowClient(f"sqlite:///{project / 'fresh.db'}")
    runs = client.search_runs([client.get_experiment_by_name("metaaug").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_sqlite_cause_is_named_not_the_autoflush_hint():
    import sqlite3

    import sqlalchemy.exc

    from metaaug.store import first_line

    cause = sqlite3.OperationalError("database or disk is full")
    exc = sqlalchemy.exc.OperationalError("INSERT INTO metrics ...", {}, cause)
    exc = sqlalchemy.exc.OperationalError("(raised as a result of Query-invoked autoflush; consider using a "
                                          "session.no_autoflush block)\n" + str(exc), {}, cause)
    assert first_line(exc) == "SQLite: database or disk is full"


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_published_outputs_honour_the_umask(umask, dir_mode, file_mode, project, capsys):
    old = os.umask(umask)
    try:
        code, err = cli(capsys, "prepare", "--out", "fresh")
    finally:
        os.umask(old)
    assert code == 0, err
    assert (project / "fresh").stat().st_mode & 0o777 == dir_mode
    assert {p.stat().st_mode & 0o777 for p in (project / "fresh").iterdir()} == {file_mode}


# --- bounded resources ------------------------------------------------------------------------------------------------


def idx_bomb(tmp, dims, payload: int):
    """A gzipped IDX images file whose header declares `dims`, followed by `payload` zero bytes."""
    import gzip
    import struct

    root = tmp / "idx"
    root.mkdir()
    write_idx(root, "train", np.zeros((4, 5, 5), np.uint8), np.array([0, 1, 0, 1], np.uint8), gz=True)
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb", compresslevel=1) as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, *dims))
        for _ in range(payload >> 20):
            fh.write(bytes(1 << 20))
    return root


@pytest.mark.parametrize("dims, payload, names", [
    ((4, 5, 5), 64 << 20, ["train-images-idx3-ubyte.gz", "truncated"]),  # inflates far past what it declares
    ((100000, 100, 100), 0, ["train-images-idx3-ubyte.gz", "compressed bytes can hold"]),  # declares 1 GB
], ids=["longer_than_declared", "declares_more_than_it_can_hold"])
def test_gzip_bomb_stops_prepare_early(dims, payload, names, tmp_path, capsys):
    import tracemalloc

    root = idx_bomb(tmp_path, dims, payload)
    tracemalloc.start()
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path, **{"data.source": f"idx:{root}"}),
                    "--out", tmp_path / "out")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert_one_line_error(code, err, *names)
    assert peak < 32 << 20, peak


def test_cifar_member_larger_than_any_cifar_file_is_not_read(tmp_path, capsys, monkeypatch):
    from metaaug.data import cifar

    monkeypatch.setattr(cifar, "CIFAR_MAX_FILE", 1 << 20)
    folder_name, files, _, _ = cifar_files(hundred=False)
    files["data_batch_1"] = bytes(2 << 20)
    write_cifar_tar(tmp_path / "c.tar.gz", folder_name, files)
    params = params_file(tmp_path, **{"data.source": f"cifar:{tmp_path}/c.tar.gz"})
    code, err = cli(capsys, "prepare", "--params", params, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "data_batch_1", "at most 1 MiB")


def test_yaml_alias_bomb_is_refused_in_a_short_line(tmp_path, capsys):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f'{k}: &{k} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]' for p, k in zip("abcdefgh", "bcdefghi")]
    path = tmp_path / "params.yaml"
    path.write_text("\n".join(lines) + "\nseed: *i\n")
    code, err = cli(capsys, "prepare", "--params", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, "params.yaml", "alias")
    assert len(err) < 1000


def test_policy_with_absurd_layers_stops_augment_at_once(prepared, tmp_path, capsys):
    policy = policy_output(tmp_path, {**GOOD_POLICY, "policy": {**GOOD_POLICY["policy"], "layers": 1000000000}})
    start = time.monotonic()
    code, err = cli(capsys, "augment", "--params", params_file(tmp_path), "--prepared", prepared,
                    "--policy", policy, "--out", tmp_path / "out" / "augmented")
    assert_one_line_error(code, err, "layers", "1000000000")
    assert time.monotonic() - start < 10


def test_augment_checks_its_disk_estimate_before_writing(tmp_path):
    from metaaug.errors import MetaaugError
    from metaaug.files import check_free_space

    with pytest.raises(MetaaugError, match=r"needs .* GB but .* GB free; expected more free space there, or fewer"):
        check_free_space(tmp_path / "augmented", shutil.disk_usage(tmp_path).free * 2, "augment", "fewer copies")
    check_free_space(tmp_path / "augmented", 1, "augment", "fewer copies")
