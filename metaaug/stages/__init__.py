"""The pipeline's stages, one module each: `DECLARATION` says what it reads, writes and depends on
(metaaug.declaration), `run()` computes inside metaaug.runner.stage_run, which owns the boundary (checks,
MLflow run, temps, publishing, datasets), and `command()` is its command line (`metaaug <stage>`, or
`python stages/<stage>.py`, the entry dvc.yaml runs), its path options' defaults from the declaration.

Shared here: the CPU kernels every stage runs with (pin_cpu_kernels, before any stage imports torch), the
`--params` option, the rule that bad input is one `error:` line and exit code 2, never a traceback, and a
quick exit (below).
"""

from __future__ import annotations

import atexit
import errno
import functools
import gc
import os
import platform
import sys
from pathlib import Path

# On x86-64, torch (ATen), oneDNN and MKL pick their kernels by the CPU's instruction set, and an AVX-512 kernel
# rounds differently from an AVX2 one: the same params would give other bytes (another dvc.lock) on another CPU.
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}


def pin_cpu_kernels() -> dict[str, str]:
    """Pin torch's, oneDNN's and MKL's CPU kernels to AVX2 on x86-64 CPUs that have it, so that every such CPU
    computes the pipeline's outputs bit for bit alike (dvc.lock's hashes). Environment variables the user set
    win once checked against the values each library accepts (metaaug.kernels: a typo stops here with one line
    and exit code 2, as it would otherwise silently unpin the kernels); nothing changes on other CPUs, or once
    torch is imported (the libraries read them at load). Returns what was set."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    from metaaug.errors import MetaaugError
    from metaaug.kernels import check_kernel_overrides

    try:
        check_kernel_overrides(os.environ)
    except MetaaugError as exc:  # at import, before the commands' own error handling exists
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if "torch" in sys.modules:
        return {}
    try:
        with open("/proc/cpuinfo") as fh:
            has_avx2 = any(line.startswith("flags") and " avx2" in line for line in fh)
    except OSError:
        has_avx2 = False
    pinned = {k: v for k, v in PINNED_KERNELS.items() if has_avx2 and k not in os.environ}
    os.environ.update(pinned)
    return pinned


pin_cpu_kernels()

# The interpreter's last garbage collections walk every object torch and MLflow made: about 1.5 s of a stage
# process's exit on 2 cores, paid by each of the pipeline's ten stages. Frozen objects are left out of them;
# this runs after every other exit handler (registered first, run last), and nothing is skipped but the walk.
atexit.register(gc.freeze)

import typer  # noqa: E402

from metaaug.errors import MetaaugError  # noqa: E402

PARAMS = typer.Option(Path("params.yaml"), "--params", help="Validated configuration file.")


EXPECTED = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "free space in this user's disk quota",
            errno.EROFS: "a writable file system", errno.EACCES: "a path this user may read and write",
            errno.EPERM: "a path this user may read and write", errno.ENOTDIR: "a folder at every level of that path",
            errno.ENOENT: "an existing path", errno.EISDIR: "a file there, not a folder",
            errno.EEXIST: "no other file at that path", errno.ENAMETOOLONG: "a shorter path"}


def os_error_line(exc: OSError) -> str:
    """One line for a file-system failure: the path (both, for a rename), the system's reason, what is expected."""
    where = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    expected = EXPECTED.get(exc.errno, "a path this user can read and write, on a disk with free space")
    return f"{where}: {reason}; expected {expected}" if where is not None else f"{reason}; expected {expected}"


MAX_ERROR = 1000  # characters: a message quoting a huge value (an expanded YAML alias) stays readable


def one_line(message: str) -> str:
    """`message` on one line, at most MAX_ERROR characters: the middle is cut, the `; expected ...` end kept."""
    message = message.replace("\r", " ").replace("\n", " ")
    if len(message) <= MAX_ERROR:
        return message
    return f"{message[:MAX_ERROR // 2]} [... {len(message) - MAX_ERROR + 300} characters cut ...] " \
           f"{message[-(MAX_ERROR // 2 - 300):]}"


def one_line_errors(fn):
    """Turn MetaaugError and file-system errors (OSError) into `error: <message>` on stderr and exit code 2
    (both for `metaaug <stage>` and for `python stages/<stage>.py`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MetaaugError as exc:
            message = str(exc)
        except OSError as exc:
            message = os_error_line(exc)
        typer.echo("error: " + one_line(message), err=True)
        raise typer.Exit(2) from None

    return wrapper


def run_command(command, argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run one stage's command as a program (`python stages/<stage>.py ...`, `metaaug <stage> ...`)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(one_line_errors(command))
    app(args=sys.argv[1:] if argv is None else argv,
        prog_name=prog_name or f"stages/{command.__module__.rsplit('.', 1)[-1]}.py")
