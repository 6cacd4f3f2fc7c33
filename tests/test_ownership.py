"""Ownership is proven, never inferred; locks live with what they protect; a policy is a portable artifact.

One test per rule (issue 30), on paths a user could have anywhere: the rule is checked, not the example.
"""

import os
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaaug import publish
from metaaug.errors import MetaaugError
from metaaug.ownership import check_output, sidecar
from metaaug.search import METHODS
from metaaug.search.state import SearchState
from metaaug.store import lock_path, store_lock
from test_bad_inputs import assert_one_line_error, built, cli, params_file, project, refused, tree, two_folders  # noqa: F401


def publish_folder(path, kind="prepare", content="x\n"):
    """Write `path` as a stage does: staged, marked, published."""
    staged = publish.stage_output(path, kind)
    (staged.content / "data.txt").write_text(content)
    publish.finish(staged)
    publish.publish(staged)


# --- a missing path is checked where it will be written, sidecars included ----------------------------------------


def test_a_users_file_at_a_sidecars_name_is_never_overwritten(tmp_path):
    out = tmp_path / "metrics.json"
    sidecar(out).write_text("my own hidden notes\n")
    with pytest.raises(MetaaugError, match=r"\.metrics\.json\.metaaug\.json: exists and metaaug did not write it"):
        publish.write_json(out, {"a": 1}, kind="evaluate.metrics")
    assert sidecar(out).read_text() == "my own hidden notes\n" and not out.exists()
    sidecar(out).unlink()
    publish.write_json(out, {"a": 1}, kind="evaluate.metrics")  # metaaug's own sidecar, its file deleted: replaced
    out.unlink()
    publish.write_json(out, {"a": 2}, kind="evaluate.metrics")
    assert out.read_text().strip().endswith("}")


def test_a_users_file_at_a_sidecars_name_stops_evaluate_untouched(project, capsys):
    (project / ".new.json.metaaug.json").write_text("mine\n")
    refused(capsys, project, "evaluate", "--metrics", "new.json", names=[".new.json.metaaug.json", "did not write"])


# --- an existing folder keeps its mode, group, setgid and ACLs ---------------------------------------------------


def acl(uid: int) -> bytes:
    """A POSIX access ACL (the kernel's xattr format): owner rwx, user `uid` r-x, group r-x, mask r-x, other ---."""
    entries = [(0x01, 7, 0xFFFFFFFF), (0x02, 5, uid), (0x04, 5, 0xFFFFFFFF), (0x10, 5, 0xFFFFFFFF),
               (0x20, 0, 0xFFFFFFFF)]
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


@pytest.mark.parametrize("mode", [0o700, 0o2750, 0o1770])
@pytest.mark.parametrize("earlier", ["empty folder", "own output"])
def test_a_replaced_folder_keeps_its_mode_group_and_setgid(tmp_path, mode, earlier):
    out = tmp_path / "out"
    out.mkdir() if earlier == "empty folder" else publish_folder(out)
    group = os.getgroups()[-1] if os.getgroups() else os.getegid()
    os.chown(out, -1, group)
    os.chmod(out, mode)
    publish_folder(out, content="new\n")
    st = out.stat()
    assert (out / "data.txt").read_text() == "new\n"
    assert stat.S_IMODE(st.st_mode) == mode and st.st_gid == group
    if mode & stat.S_ISGID:  # what a setgid folder gives the files written in it
        assert all((out / name).stat().st_gid == group for name in os.listdir(out))


def test_a_replaced_folder_keeps_its_acl(tmp_path):
    out = tmp_path / "out"
    publish_folder(out)
    try:
        os.setxattr(out, "system.posix_acl_access", acl(4321))
    except OSError as exc:
        pytest.skip(f"no POSIX ACLs on this file system ({exc.strerror})")
    publish_folder(out, content="new\n")
    assert os.getxattr(out, "system.posix_acl_access") == acl(4321)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may give a folder any group")
def test_a_folder_of_a_group_this_user_is_not_in_is_refused_up_front(tmp_path):
    import grp

    foreign = next((g.gr_gid for g in grp.getgrall() if g.gr_gid not in {os.getegid(), *os.getgroups()}), None)
    out = tmp_path / "out"
    out.mkdir()
    try:
        os.chown(out, -1, foreign)
    except (OSError, TypeError):
        pytest.skip("cannot make a folder of another group here")
    with pytest.raises(MetaaugError, match="which this user is not in"):
        check_output(out, "prepare")


# --- late failures found up front ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["n" * 230, "é" * 120])  # bytes, not characters, are what the file system counts
def test_a_name_too_long_for_the_temp_and_sidecar_stops_before_any_store(tmp_path, capsys, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fresh.db'}")
    code, err = cli(capsys, "prepare", "--params", params_file(tmp_path), "--out", tmp_path / name)
    assert_one_line_error(code, err, "too long", "bytes")
    assert sorted(os.listdir(tmp_path)) == ["params.yaml"]
    with pytest.raises(MetaaugError, match="too long"):  # a JSON output file: its sidecar's name is longer still
        check_output(tmp_path / (name[:len(name) - 10] + ".json"), "evaluate.metrics", file=True)


def test_an_output_at_a_mount_point_is_refused_up_front(tmp_path):
    mount = next((m for m in ("/dev/shm", "/run", "/tmp") if os.path.ismount(m) and os.access(m, os.W_OK)), None)
    if mount is None:
        pytest.skip("no writable mount point here")
    with pytest.raises(MetaaugError, match="is a mount point"):
        check_output(mount, "prepare")


# --- an output inside any input, an input inside an output ------------------------------------------------------------


@pytest.mark.parametrize("out", ["imgs/prepared", "imgs/a/prepared"])
def test_prepare_out_inside_its_image_folder_source_is_refused(tmp_path, capsys, monkeypatch, out):
    monkeypatch.chdir(tmp_path)
    root = two_folders(tmp_path / "imgs")
    params = params_file(tmp_path, **{"data.source": f"imagefolder:{root}", "tasks.target_classes": ["e", "f"],
                                      "tasks.shots": 2})
    before = tree(root)
    code, err = cli(capsys, "prepare", "--params", params, "--out", out)
    assert_one_line_error(code, err, "lies inside the input", str(root))
    assert tree(root) == before


# --- the search checkpoint is verified on resume ----------------------------------------------------------------------


def test_an_edited_search_checkpoint_is_refused_on_resume(tmp_path):
    path = tmp_path / ".policy.checkpoint-abc.json"
    race_state = METHODS["race"].state  # the race method's own part of the state
    SearchState("race", own=race_state(), rung=2, best=[0.1, 0.2]).save(path)
    assert SearchState.load(path, race_state).best == [0.1, 0.2]
    path.write_text(path.read_text().replace("0.1", "0.9"))  # valid JSON, other evidence
    with pytest.raises(MetaaugError, match=r"does not match the SHA-256 .*delete it to restart the search"):
        SearchState.load(path, race_state)
    sidecar(path).unlink()  # no record at all: nothing vouches for it either
    with pytest.raises(MetaaugError, match="delete it to restart the search"):
        SearchState.load(path, race_state)


# --- the store lock ---------------------------------------------------------------------------------------------------


def test_the_store_lock_lives_beside_the_store_and_refuses_a_link(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with store_lock(uri):
        assert lock_path(tmp_path / "mlflow.db").is_file()
    assert sorted(os.listdir(tmp_path)) == ["mlflow.db.lock"]
    lock_path(tmp_path / "mlflow.db").unlink()
    lock_path(tmp_path / "mlflow.db").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(MetaaugError, match="is a symbolic link"):
        with store_lock(uri):
            pass
    assert not (tmp_path / "elsewhere").exists()


def test_a_held_store_lock_times_out_in_one_line_naming_its_holder(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom metaaug.store import store_lock\n"
                               f"with store_lock({uri!r}):\n    print('held', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        with pytest.raises(MetaaugError, match=rf"held by another process \(pid {holder.pid} on .*for over 0.5 s"):
            with store_lock(uri, timeout=0.5):
                pass
        assert time.monotonic() - start < 5
    finally:
        holder.kill()
        holder.wait()
    with store_lock(uri, timeout=5):  # a lock ends with its process
        pass


# --- a learned policy reused on new data, no search ------------------------------------------------------------------


def test_a_policy_searched_on_other_data_is_applied_trained_and_evaluated(project, capsys):
    """prepare A, metatrain A (the built project), prepare B (`same_shape`: another seed), then augment, train and
    evaluate B with A's policy: used as given, said in a note and tagged on each run, never refused."""
    import mlflow

    steps = [["learner", "--prepared", "same_shape", "--out", "b/learner"],  # B's own learner trial
             ["augment", "--prepared", "same_shape", "--out", "b/augmented"],
             *(["train", "--arm", arm, "--prepared", "same_shape", "--learner", "b/learner", "--out",
                f"b/downstream/{arm}"] for arm in ("none", "trivialaugment")),
             ["train_learned", "--prepared", "same_shape", "--learner", "b/learner", "--augmented", "b/augmented",
              "--out", "b/downstream/learned"],
             ["evaluate", "--prepared", "same_shape", "--downstream", "b/downstream", "--metrics", "b/metrics.json",
              "--plots", "b/plots", "--reports", "b/reports"]]
    for args in steps:
        code, err = cli(capsys, *args)
        assert code == 0, err
        reads_the_policy = args[0] in ("augment", "train_learned", "evaluate")
        assert ("note: models/policy was made from another prepare output than same_shape" in err) == reads_the_policy
    assert (project / "b" / "reports" / "report.md").is_file()
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("metaaug").experiment_id],
                              order_by=["attributes.start_time DESC"], max_results=len(steps))
    tagged = {r.data.tags["metaaug.stage"] for r in runs if r.data.tags.get("metaaug.metatrain.made_from.prepare")}
    assert tagged == {"augment", "train_learned", "evaluate"}


def test_git_dirty_ignores_the_stage_own_outputs_and_names_the_others(tmp_path, monkeypatch):
    """DVC deletes a stage's outputs before running it: that is no edit of the tree (the first porcelain line,
    whose status column starts with a blank, included); any other change makes the run dirty and is named."""
    from metaaug.runner import git_info

    monkeypatch.chdir(tmp_path)
    for name in ("metrics.json", "params.yaml"):
        (tmp_path / name).write_text("{}\n")
    for args in (("init", "-q"), ("add", "-A"), ("commit", "-qm", "outputs")):
        subprocess.run(["git", *args], check=True, capture_output=True)
    (tmp_path / "metrics.json").unlink()
    assert git_info([Path("metrics.json")])["git.dirty"] == "false"
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    info = git_info([Path("metrics.json")])
    assert info["git.dirty"] == "true" and info["git.changed"] == "params.yaml"
