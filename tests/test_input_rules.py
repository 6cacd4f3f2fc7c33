"""Inputs are refused up front or read in full fidelity (issue 30): every file read is bounded in size and
depth, params are validated completely and named as given, names that reach MLflow or paths are safe, kernel
overrides are checked, every fork is capped by the work, `metaaug results` shows only its own runs' timings,
and the suite itself writes nothing into the repository."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, repo_changes, repo_state, tiny_params
from metaaug.cli import main
from metaaug.config import load_params
from metaaug.errors import MetaaugError
from metaaug.reading import MAX_DEPTH, load_json


def cli(capsys, *args, stream: str = "err") -> tuple[int, str]:
    """`metaaug <args>` in this process: (exit code, stderr or, with stream="out", stdout)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, getattr(capsys.readouterr(), stream)


def one_line(code: int, err: str, *names: str) -> str:
    """The last stderr line is the one `error:` line, exit code 2, naming `names`."""
    line = err.splitlines()[-1]
    assert code == 2 and line.startswith("error: ") and "; expected" in line and "Traceback" not in err, err
    assert all(name in line for name in names), line
    return line


# --- every file read is bounded --------------------------------------------------------------------------------


def test_params_from_an_endless_device_is_refused_after_the_cap(tmp_path, capsys):
    code, err = cli(capsys, "prepare", "--params", "/dev/zero", "--out", tmp_path / "out")
    one_line(code, err, "/dev/zero", "larger than 1048576 bytes")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", [
    "seed: " + "[" * 100000 + "]" * 100000,  # flow style: the composer would recurse 100,000 deep
    "tasks:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 800)),  # block style
], ids=["flow", "block"])
def test_deeply_nested_params_are_one_line(text, tmp_path, capsys):
    (tmp_path / "deep.yaml").write_text(text)
    code, err = cli(capsys, "prepare", "--params", tmp_path / "deep.yaml", "--out", tmp_path / "out")
    one_line(code, err, "deep.yaml", f"more than {MAX_DEPTH} levels deep")
    assert len(err) < 1000


@pytest.mark.parametrize("text, words", [
    ("[" * 100000 + "]" * 100000, "levels deep"),  # past Python's recursion limit
    ("[" * 40 + "]" * 40, "levels deep"),  # parses, but deeper than any document metaaug writes
    ('{"a": ' * 3 + "1" + "}" * 3 + "x", "not valid JSON"),
])
def test_json_documents_are_bounded(text, words, tmp_path):
    (tmp_path / "doc.json").write_text(text)
    with pytest.raises(MetaaugError, match=words):
        load_json(tmp_path / "doc.json", "a document")
    (tmp_path / "big.json").write_text(" " * 2000)
    with pytest.raises(MetaaugError, match=r"big.json: is larger than 1000 bytes \(reading stopped there\)"):
        load_json(tmp_path / "big.json", "a document", limit=1000)


def test_a_policy_file_is_read_bounded(tmp_path):
    from metaaug.policies import read_policy

    (tmp_path / "policy.json").write_text('{"policy": ' * 50 + "{}" + "}" * 50)
    with pytest.raises(MetaaugError, match="policy.json: nests lists or mappings more than 32 levels deep"):
        read_policy(tmp_path / "policy.json")


# --- params: validated completely, named as given --------------------------------------------------------------


@pytest.mark.parametrize("name", ["other.yaml", "sub/params.yaml"])
def test_errors_name_the_params_file_given(name, tmp_path, capsys):
    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump({**tiny_params(), "sed": 1}))
    code, err = cli(capsys, "prepare", "--params", path, "--out", tmp_path / "out")
    assert one_line(code, err, "unknown key sed").startswith(f"error: {path}: ")


@pytest.mark.parametrize("key, value", [
    ("policy_model", ".."), ("policy_model", "."), ("policy_model", "../x"), ("policy_model", "a/b"),
    ("policy_model", "a:b"), ("policy_model", "x\x1b[31m"), ("policy_model", "..x"), ("policy_model", "p" * 201),
    ("policy_model", "pólicy"), ("experiment", ".."), ("experiment", "a/b"), ("experiment", "a\\b"),
    ("experiment", "line\nbreak"), ("experiment", "tab\there"), ("experiment", " padded"), ("experiment", "e" * 501),
])
def test_tracking_names_are_refused_before_anything_runs(key, value, tmp_path, capsys):
    params = tiny_params(**{f"tracking.{key}": value})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    code, err = cli(capsys, "prepare", "--params", tmp_path / "p.yaml", "--out", tmp_path / "out")
    one_line(code, err, f"tracking.{key} = ")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key, value", [("policy_model", "my-policy.v2_1"), ("experiment", "my exp (2024)")])
def test_tracking_names_mlflow_takes_pass(key, value, tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(tiny_params(**{f"tracking.{key}": value})))
    assert getattr(load_params(tmp_path / "p.yaml").tracking, key) == value


# --- kernel overrides ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value, ok", [
    ("ONEDNN_MAX_CPU_ISA", "AVX3", False), ("ONEDNN_MAX_CPU_ISA", "avx2", False), ("ONEDNN_MAX_CPU_ISA", "AVX2", True),
    ("ATEN_CPU_CAPABILITY", "AVX2", False), ("ATEN_CPU_CAPABILITY", "avx512", True),
    ("MKL_CBWR", "AVX2,STRICT", True), ("MKL_CBWR", "BRANCH=AVX2", True), ("MKL_CBWR", "AVX2,STRICTLY", False),
    ("DNNL_MAX_CPU_ISA", "SSE4", False),
])
def test_kernel_overrides_are_checked(name, value, ok):
    from metaaug.kernels import check_kernel_overrides

    if ok:
        check_kernel_overrides({name: value})
    else:
        with pytest.raises(MetaaugError, match=f"environment variable {name}={value!r} .*; expected one of"):
            check_kernel_overrides({name: value})


def test_a_kernel_typo_stops_the_command_with_one_line(tmp_path):
    import os
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the kernel variables are x86-64's")
    done = subprocess.run([sys.executable, "-m", "metaaug", "prepare", "--help"], capture_output=True, text=True,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX-2"}, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "ONEDNN_MAX_CPU_ISA='AVX-2'" in done.stderr


# --- every count that forks or allocates is capped by the work -------------------------------------------------


def _pid(_):
    import os

    return os.getpid()


def test_workers_fork_no_more_processes_than_work():
    from metaaug import workers

    assert workers.count(1024) <= workers.OVERSUBSCRIBE * workers.cores()
    assert workers.count(0) == workers.cores()
    with workers.Pool(64, {}) as pool:
        pids = set(pool.map(_pid, range(3)))
        assert pool.size == 3 and len(pool.pool._processes) == 3 and len(pids) <= 3
        assert list(pool.map(_pid, range(1))) and pool.size == 3  # a smaller map reuses them
    with workers.Pool(64, {}) as pool:
        import os

        assert set(pool.map(_pid, range(1))) == {os.getpid()} and pool.pool is None  # one item: in-process


def test_population_is_capped_by_the_jobs():
    from metaaug.population import populations

    assert [len(p) for p in populations(list(range(4)), 4096)] == [4]


# --- `metaaug results`: foreign or damaged timings, and only its own runs' ---------------------------------------


def evaluation_doc(inputs: dict) -> dict:
    from metaaug.stats import compare

    rng = np.random.default_rng(0)
    metrics = compare({arm: rng.random(4) for arm in ("none", "trivialaugment", "learned")})
    return {**metrics, "verdict": "a verdict", "inputs": inputs}


def timings(folder, metatrain: object, train: object):
    folder.mkdir(exist_ok=True)
    for name, doc in (("metatrain.json", metatrain), ("train_learned.json", train)):
        (folder / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return folder


SEARCH = {"search_seconds": 30.0, "proxy_seconds": 50.0, "workers": 2, "machine": "m", "output_digest": "policy1"}
TRAIN = {"run_seconds": 3.0, "machine": "m", "output_digest": "models1"}


@pytest.mark.parametrize("metatrain, train, names", [
    ([1, 2], TRAIN, ["metatrain.json", "no timing"]),
    ({}, TRAIN, ["metatrain.json", "'search_seconds' is None"]),
    (SEARCH, {**TRAIN, "run_seconds": 0}, ["train_learned.json", "'run_seconds' is 0"]),
    (SEARCH, {**TRAIN, "run_seconds": "3"}, ["train_learned.json", "'run_seconds' is '3'"]),
    ({**SEARCH, "machine": None}, TRAIN, ["metatrain.json"]),
    ("{", TRAIN, ["metatrain.json", "not valid JSON"]),
    (SEARCH, "[" * 5000, ["train_learned.json", "levels deep"]),
])
def test_results_at_foreign_timings_is_one_line(metatrain, train, names, tmp_path, capsys):
    evaluation = evaluation_doc({"metatrain": "policy1", "train_learned": "models1"})
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    folder = timings(tmp_path / "timings", metatrain, train)
    code, err = cli(capsys, "results", "--evaluation", tmp_path / "evaluation.json", "--timings", folder)
    one_line(code, err, *names)


def test_results_shows_only_the_timings_of_the_outputs_it_evaluated(tmp_path, capsys):
    """Each timing names the digest of the output it timed; evaluation.json the digests of the outputs it
    compared: a cost is shown only where both match (an evaluation without digests shows none)."""
    folder = timings(tmp_path / "timings", SEARCH, TRAIN)
    for inputs, shown in (({"metatrain": "policy1", "train_learned": "models1"}, True),
                          ({"metatrain": "policy2", "train_learned": "models1"}, False),
                          ({"metatrain": "policy1"}, False)):
        (tmp_path / "evaluation.json").write_text(json.dumps(evaluation_doc(inputs)))
        code, out = cli(capsys, "results", "--evaluation", tmp_path / "evaluation.json", "--timings", folder,
                        stream="out")
        assert code == 0 and ("took 10.0× one downstream training" in out) == shown, out
        assert shown or "Search cost: not shown: " in out
    (tmp_path / "evaluation.json").write_text(json.dumps(["v"]))
    code, err = cli(capsys, "results", "--evaluation", tmp_path / "evaluation.json", "--timings", folder)
    one_line(code, err, "evaluation.json", "is not the evaluation evaluate writes")


def test_a_timing_records_its_run(tmp_path):
    import mlflow

    from metaaug.timing import timing_doc

    with mlflow.start_run() as run:
        assert timing_doc(None, run_seconds=1.0)["run_id"] == run.info.run_id
    # the session's temporary folder, never the repository's mlruns/
    assert str(REPO) not in run.info.artifact_uri and str(tmp_path.parent) in run.info.artifact_uri


# --- the suite writes nothing into the repository ----------------------------------------------------------------


def test_the_repository_guard_sees_every_write(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/mlruns/\n")
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "old").write_text("a user's run")
    before = repo_state(tmp_path)
    assert "mlruns/old" in before
    (tmp_path / "mlruns" / "new").write_text("a test's artifact")
    assert repo_changes(before, repo_state(tmp_path)) == ["mlruns/new"]
    (tmp_path / "mlruns" / "old").write_text("rewritten, longer")
    assert "mlruns/old" in repo_changes(before, repo_state(tmp_path))


def test_a_data_dependent_params_error_names_the_file_given(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(tiny_params(**{"tasks.shots": 5000})))
    code, err = cli(capsys, "prepare", "--params", path, "--out", tmp_path / "out")
    assert one_line(code, err, "tasks.shots = 5000").startswith(f"error: {path}: ")
