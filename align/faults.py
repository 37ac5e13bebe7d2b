"""What a run does when things go wrong: it refuses a directory another run holds, stops with one line
when the disk is full, and (for tests only) kills itself at a named point.

Only the standard library is imported here, so that `align.cli` can catch `RunFault` cheaply.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

LOCK_NAME = ".lock"


class RunFault(Exception):
    """The run cannot go on (disk full, NaN steps in a row, a directory another run holds); the CLI
    prints it as one `error:` line with exit code 2. The last good checkpoint is left as it was."""


# --- one run per directory ------------------------------------------------------------------------


@contextlib.contextmanager
def run_lock(directory: Path):
    """Hold DIRECTORY/.lock (the owner's pid and host) while a run writes there; released on exit,
    errors included. A lock whose process is gone (a killed run) is taken over with a warning."""
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    _acquire(path)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        if created:  # a run that failed before writing anything leaves nothing behind
            with contextlib.suppress(OSError):
                directory.rmdir()


def _acquire(path: Path) -> None:
    owner = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(2):
        try:
            handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # atomic: one winner
        except FileExistsError:
            holder = _read_owner(path)
            if _alive(holder):
                who = f"pid {holder['pid']} on {holder['host']}" if holder else "its lock names no owner yet"
                raise RunFault(
                    f"{path.parent} is in use by another run ({who}); wait for it, or delete {path} if "
                    "that run is gone"
                ) from None
            print(
                f"warning: taking over the stale lock {path}: pid {holder.get('pid')} is no longer running",
                file=sys.stderr,
            )
            # Two runs taking over the same stale lock at the same instant could both succeed here; a
            # stale lock already means a crash, so that double fault is accepted rather than engineered.
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(handle, "w") as file:
            json.dump(owner, file)
        return
    raise RunFault(f"could not take the lock {path}; another run took it first")


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else {}


def _alive(owner: dict) -> bool:
    """Is the lock's owner running? Without an owner (a run between creating its lock and writing it)
    or on another host, it cannot be checked: assume it is."""
    if not owner or owner.get("host") != socket.gethostname():
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


# --- disk full ------------------------------------------------------------------------------------


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full(directory: Path, needed: int) -> RunFault:
    """The one-line stop for a write that found the disk full (`needed` bytes: an estimate)."""
    directory = Path(directory)
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    return RunFault(
        f"disk full writing {directory}: {_megabytes(free)} free, about {_megabytes(needed)} needed; "
        "free space (or lower train.keep_checkpoints) and continue with --resume"
    )


def _megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


# --- test hook ------------------------------------------------------------------------------------

# ALIGN_TEST_KILL_AT=phase:N (tests only) makes the process SIGKILL itself at the Nth `kill_point(phase)`,
# so that a test can cut a run at an exact point; phase:N@R, only the launched process of rank R. Read
# once at import; unset, a kill point is one `if`.
_KILL_AT = os.environ.get("ALIGN_TEST_KILL_AT")
_reached: dict[str, int] = {}


def kill_point(phase: str) -> None:
    if _KILL_AT is None:
        return
    target, _, rest = _KILL_AT.partition(":")
    count, _, rank = rest.partition("@")
    if phase != target or (rank and os.environ.get("RANK", "0") != rank):
        return
    _reached[phase] = _reached.get(phase, 0) + 1
    if _reached[phase] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
