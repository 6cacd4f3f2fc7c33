"""Progress bars: drawn on a terminal, silent in pipes, in CI and when switched off."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

LOOP = "from metaaug.progress import progress\nfor _ in progress(range(3), desc='epochs'): pass\nprint('done')"


def run_loop(env_extra: dict, tty: bool) -> tuple[str, str]:
    """Run a 3-step loop in a fresh interpreter; stderr is a pseudo-terminal when `tty`. Returns (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "METAAUG_PROGRESS")} | env_extra
    if not tty:
        out = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, env=env, check=True)
        return out.stdout, out.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a real terminal has a size
    proc = subprocess.Popen([sys.executable, "-c", LOOP], stdout=subprocess.PIPE, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    stdout = proc.communicate()[0].decode()
    os.close(leader)
    assert proc.returncode == 0
    return stdout, b"".join(chunks).decode(errors="replace")


def test_bar_is_drawn_on_a_terminal():
    stdout, stderr = run_loop({}, tty=True)
    assert stdout == "done\n"
    assert "epochs" in stderr and "0/3" in stderr


@pytest.mark.parametrize("env_extra, tty", [({}, False), ({"CI": "true"}, True), ({"METAAUG_PROGRESS": "0"}, True)],
                         ids=["pipe", "ci", "switched-off"])
def test_silent_when_nobody_watches(env_extra, tty):
    stdout, stderr = run_loop(env_extra, tty)
    assert stdout == "done\n"
    assert stderr == ""
