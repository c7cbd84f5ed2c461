"""A run's output folder: its lock, its stored configuration and its leftover temporary files.

`train.run` keeps one training run per `--out_dir`. This module holds the parts of
that bookkeeping that need no TensorFlow, so that they are quick to test:

* `OutDirLock`: an exclusive lock on the folder for the lifetime of the process
  (`<out_dir>/.lock`, holding the owner's PID and host), so two runs never write the
  same checkpoints. It is a kernel lock (`flock`), which the operating system drops when
  its process dies, however it dies: a lock file left by a killed run is stale by
  construction, and the next run takes it over (and says so).
* `load_config` / `save_config` / `config_differences`: the run's configuration, stored
  in `<out_dir>/config.json` when the run first starts and compared with the flags of
  every later start, so that a rerun with other model, objective, seed or data flags is
  refused instead of silently continuing the stored run under a new label.
* `load_metrics`: the run's `<out_dir>/metrics.json`; a damaged one (not JSON, or not
  the metrics of a run) is treated like a damaged checkpoint: renamed aside to
  `metrics.json.corrupt` with a warning, and the run goes on (`train.py` rebuilds its
  evaluations from the TensorBoard summaries).
* `remove_orphans`: the temporary files and folders an interrupted save leaves behind.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import pathlib
import shutil
import socket
from collections.abc import Callable
from typing import Any

try:  # POSIX
    import fcntl
except ImportError:  # Windows: msvcrt's byte-range lock, also dropped when its process dies
    fcntl = None
    import msvcrt

__all__ = [
    "CONFIG_NAME",
    "LOCK_NAME",
    "METRICS_NAME",
    "OutDirInUse",
    "OutDirLock",
    "config_differences",
    "load_config",
    "load_metrics",
    "remove_orphans",
    "save_config",
    "write_json_atomically",
]

LOCK_NAME = ".lock"
CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
CORRUPT_SUFFIX = ".corrupt"  # metrics.json.corrupt: a damaged metrics.json, kept aside
# Suffixes of the files that `write_json_atomically` writes before renaming them.
_TMP_SUFFIX = ".tmp"


class OutDirInUse(RuntimeError):
    """Another live process holds the lock of the out_dir."""


def _try_lock(fd: int) -> bool:
    """Takes the exclusive lock of the open file `fd` without waiting; False if it is held."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError (POSIX) or PermissionError (Windows)
        return False
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class OutDirLock:
    """The exclusive lock of an out_dir, for the lifetime of a run.

    `acquire()` raises `OutDirInUse` (naming the owner's PID and host) when another live
    process holds it. `release()` removes the lock file: a run that ends, however it
    ends short of being killed, leaves no `.lock` behind (a killed one leaves a stale
    one, which the next run takes over).
    """

    def __init__(self, out_dir: pathlib.Path | str):
        self.path = pathlib.Path(out_dir) / LOCK_NAME
        self._fd: int | None = None
        self.stale_owner: str | None = None  # the previous owner, when its lock was stale

    @property
    def held(self) -> bool:
        return self._fd is not None

    def owner(self) -> str:
        """The PID, host and start time recorded in the lock file ('' if empty)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def acquire(self) -> OutDirLock:
        if self.held:
            return self
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                raise OutDirInUse(self._in_use_message())
            if self._is_current(fd):
                break
            # The file was removed by its owner's release between our open and our lock:
            # this lock is on a file nobody else can see. Lock the one at the path instead.
            _unlock(fd)
            os.close(fd)
        else:
            raise OutDirInUse("keeps changing hands (its lock file is replaced in a loop)")
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:  # its owner died without releasing it (killed, out of memory, ...)
            self.stale_owner = previous
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(owner) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def _is_current(self, fd: int) -> bool:
        """Whether the open file `fd` is still the one at `path` (not removed or replaced)."""
        if fcntl is None:
            return True  # Windows: an open file cannot be removed
        try:
            at_path = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (at_path.st_dev, at_path.st_ino)

    def release(self) -> None:
        """Removes the lock file (while still holding the lock) and unlocks it.

        A process that opened the file just before the removal and locks it after finds
        it no longer at the path (`_is_current`) and locks the path's new file instead,
        so two processes never both hold the out_dir. On Windows, where an open file
        cannot be removed, the file stays, emptied.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            _unlock(fd)
        os.close(fd)

    def __enter__(self) -> OutDirLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    def _in_use_message(self) -> str:
        owner = self.owner()
        try:
            record = json.loads(owner)
            who = f"process {record['pid']} on {record['host']} (started {record['started']})"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        return f"is in use by {who}"

    def describe_stale(self) -> str:
        """A sentence on the stale lock taken over, or ''."""
        if not self.stale_owner:
            return ""
        try:
            record = json.loads(self.stale_owner)
            who = f"process {record['pid']} on {record['host']}"
        except (ValueError, KeyError, TypeError):
            who = "a process"
        return f"took over the stale lock of {who}, which is no longer running"


# ----------------------------------------------------------------------- configuration
def write_json_atomically(path: pathlib.Path, payload: dict) -> None:
    """Writes `payload` to `path` via a temporary file and a rename: never half written.

    If the write fails (a full disk: OSError with errno ENOSPC), the temporary file is
    removed and `path` keeps its previous content; the OSError propagates.
    """
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _metrics_problem(metrics: Any) -> str | None:
    """Why `metrics` (parsed metrics.json) is not the metrics of a run (None if it is)."""
    if not isinstance(metrics, dict):
        return f"a JSON {type(metrics).__name__}, not an object"
    evaluations = metrics.get("evaluations", [])
    if not isinstance(evaluations, list) or not all(
        isinstance(e, dict) and isinstance(e.get("step"), int) for e in evaluations
    ):
        return "its 'evaluations' are not a list of objects with an integer 'step'"
    if not isinstance(metrics.get("train", {}), dict):
        return "its 'train' is not an object"
    return None


def quarantine(path: pathlib.Path) -> pathlib.Path:
    """Renames the damaged file `path` to `<path>.corrupt` (or `.corrupt.N`, keeping what
    an earlier damage left there); returns the new path."""
    destination = path.with_name(path.name + CORRUPT_SUFFIX)
    suffix = 1
    while destination.exists():
        destination = path.with_name(f"{path.name}{CORRUPT_SUFFIX}.{suffix}")
        suffix += 1
    os.replace(path, destination)
    return destination


def load_metrics(out_dir: pathlib.Path, warn: Callable[[str], None]) -> tuple[dict, bool]:
    """`<out_dir>/metrics.json` and whether it was damaged: ({}, False) if it is absent.

    A damaged one -- not UTF-8 or not JSON (truncated, overwritten), or not the metrics
    of a run -- is renamed aside (`quarantine`) with a warning through `warn`, and
    ({}, True) returned: like a damaged checkpoint, it never stops a resume, and its
    bytes are kept for inspection.
    """
    path = pathlib.Path(out_dir) / METRICS_NAME
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}, False
    try:
        metrics = json.loads(text.decode("utf-8"))
        problem = _metrics_problem(metrics)
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = f"{type(error).__name__}: {error}"
    if problem is None:
        return metrics, False
    moved = quarantine(path)
    warn(
        f"{path} is damaged ({problem}); moved it to {moved.name}. The run goes on from its "
        "checkpoints, its earlier evaluations rebuilt from the TensorBoard summaries."
    )
    return {}, True


def load_config(out_dir: pathlib.Path) -> dict | None:
    """The stored configuration of the run in `out_dir`, or None if there is none.

    Raises:
      ValueError: if config.json exists but is not a JSON object.
    """
    path = pathlib.Path(out_dir) / CONFIG_NAME
    if not path.exists():
        return None
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or not isinstance(config.get("flags"), dict):
        raise ValueError(f"{path} does not hold a run configuration (no 'flags' object)")
    return config


def save_config(out_dir: pathlib.Path, config: dict) -> None:
    write_json_atomically(pathlib.Path(out_dir) / CONFIG_NAME, config)


def config_differences(
    stored: dict[str, Any], current: dict[str, Any], compared: list[str]
) -> list[tuple[str, Any, Any]]:
    """(name, stored value, current value) of each name in `compared` whose values differ.

    A name missing from `stored` (a flag added since the run started) is not compared.
    Numbers compare by value (1 == 1.0), so a float flag given as an integer matches.
    """
    differences = []
    for name in compared:
        if name in stored and stored[name] != current.get(name):
            differences.append((name, stored[name], current.get(name)))
    return differences


# ----------------------------------------------------------------- leftover temporaries
def remove_orphans(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Removes what an interrupted save left in `out_dir`; returns the paths removed.

    Left behind by a process killed while saving: TensorFlow's temporary shard folders
    (`checkpoints/ckpt-N_temp/`), the temporary copies of the checkpoint state file
    (`checkpoints/checkpoint.tmp<hex>`), data files of a checkpoint whose index was never
    written (`checkpoints/ckpt-N.data-*` without `ckpt-N.index`), and the temporary
    copies of this run's JSON files (`*.json.tmp`) and pictures (`pictures/*.png.tmp`).
    Call it only while holding the lock: no save of another process can then be under way.
    """
    out_dir = pathlib.Path(out_dir)
    removed = []
    checkpoints = out_dir / "checkpoints"
    candidates = list(out_dir.glob(f"*.json{_TMP_SUFFIX}"))
    candidates += list(out_dir.glob(f"pictures/*.png{_TMP_SUFFIX}"))
    if checkpoints.is_dir():
        candidates += list(checkpoints.glob("*_temp"))
        candidates += list(checkpoints.glob("checkpoint.tmp*"))
        for data in checkpoints.glob("*.data-*-of-*"):
            prefix = data.name.split(".data-", 1)[0]
            if not (checkpoints / f"{prefix}.index").exists():
                candidates.append(data)
    for path in sorted(candidates):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed.append(path)
    return removed
