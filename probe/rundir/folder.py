"""The life of a run folder on disk: create it for a new run, replace an old run safely, lock it
against a second writer, write the manifest, clean up what an interrupted write left behind.

Safety rules (issue 16):

* ``--overwrite`` replaces only a folder that is a gateprobe run: its ``manifest.json`` has the
  ``schema_version`` and ``gateprobe_version`` keys and every entry is one of a run's own files
  (:data:`RUN_FILES`, ``samples/``, temporaries of interrupted writes). Anything else is refused
  and left untouched.
* The run being replaced is moved aside to ``.NAME.replaced`` first and put back if the new one
  fails. An aside left by an interrupted ``--overwrite`` is the only complete copy of that run: it
  is never deleted before a new complete run is in ``NAME``; where both are complete, gateprobe
  refuses and says where each is.
* A writer holds an advisory lock (``flock``) on ``.NAME.lock`` beside the folder (beside, not
  inside: the folder itself is renamed aside while it is replaced), named after the resolved path,
  so that a symbolic link to the folder takes the same lock; a second writer gets one line naming
  the holder's pid. The lock file is removed when the writer finishes.
* A folder whose ``manifest.json`` is not a gateprobe run's is called so, with or without
  ``--overwrite``; an ``--out`` that is a symbolic link to nothing is refused in one line.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import RunError
from .files import is_temporary, write_json

try:  # advisory locks need fcntl (POSIX); elsewhere a second writer is not detected
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

# the files a run directory may hold (record, merge, --resume checkpoints, analyze)
RUN_FILES = frozenset({
    "manifest.json", "state.safetensors", "progress.safetensors", "progress.json",
    "layers.parquet", "channels.parquet", "labels.parquet", "evolution.parquet",
    "embedding.parquet", "interventions.parquet", "ablation.parquet", "attributions.parquet",
})
SAMPLES = "samples"
MANIFEST_KEYS = ("schema_version", "gateprobe_version")


def aside_path(out: Path) -> Path:
    """Where ``--overwrite`` keeps the run it replaces until the new one is written."""
    out = Path(os.path.abspath(out))
    return out.with_name(f".{out.name}.replaced")


def lock_path(out: Path) -> Path:
    """The lock file of run folder ``out``: beside its resolved path (symbolic links followed)."""
    out = Path(os.path.realpath(out))
    return out.with_name(f".{out.name}.lock")


def check_not_dangling(out: Path) -> None:
    """Refuse an ``--out`` that is a symbolic link to something that does not exist."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise RunError(f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; create that "
                       "folder, or choose another --out")


def _manifest_problem(folder: Path) -> str | None:
    """Why ``folder/manifest.json`` is not a gateprobe run's manifest (None: it is one)."""
    manifest = folder / "manifest.json"
    try:
        content = json.loads(manifest.read_text()) if manifest.is_file() and not manifest.is_symlink() else None
    except (OSError, UnicodeDecodeError, ValueError):
        content = None
    if not isinstance(content, dict) or any(key not in content for key in MANIFEST_KEYS):
        return f"its manifest.json has no {' and '.join(MANIFEST_KEYS)} keys"
    return None


def run_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a gateprobe run that ``--overwrite`` may replace (None: it is one)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return "not a folder"
    problem = _manifest_problem(folder)
    if problem:
        return problem
    foreign = _foreign_entries(folder)
    if foreign:
        return f"it holds files that are not part of a run: {', '.join(foreign[:5])}"
    return None


def _foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that are not a run's own files (sorted, relative names)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.is_file():
            if entry.name not in RUN_FILES and not is_temporary(entry.name):
                foreign.append(entry.name)
        elif entry.is_dir() and entry.name == SAMPLES:
            for sub in sorted(entry.iterdir()):
                if sub.is_symlink() or not sub.is_dir():
                    foreign.append(f"{SAMPLES}/{sub.name}")
                    continue
                for item in sorted(sub.iterdir()):
                    if item.is_symlink() or not item.is_file() or not (
                            item.suffix == ".npy" or is_temporary(item.name)):
                        foreign.append(f"{SAMPLES}/{sub.name}/{item.name}")
        else:
            foreign.append(entry.name + ("/" if entry.is_dir() else ""))
    return foreign


def _refuse_foreign(out: Path, problem: str | None) -> None:
    if problem is not None:
        raise RunError(f"{out} is not a gateprobe run ({problem}); gateprobe writes into a new or empty folder, "
                       "or replaces one of its own runs with --overwrite, and left it untouched: choose another "
                       "--out, or move its files away yourself")


def check_replaceable(out: Path) -> None:
    """Raise :class:`RunError` unless ``out`` is a gateprobe run that ``--overwrite`` may replace."""
    _refuse_foreign(out, run_problem(out))


def _is_complete(out: Path) -> bool:
    try:
        return bool(json.loads((Path(out) / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def check_new_run_dir(out: str | Path, overwrite: bool = False) -> None:
    """Raise what :func:`prepare_run_dir` would refuse ``out`` for, changing nothing (so a command
    can refuse before its expensive part)."""
    out = Path(out)
    check_not_dangling(out)
    if (out / "manifest.json").exists():
        if not overwrite:
            _refuse_foreign(out, _manifest_problem(out))
            hint = "" if _is_complete(out) else " (an incomplete one: pass --resume to continue it)"
            aside = aside_path(out)
            if aside.is_dir():
                hint += f"; the run it replaced is kept in {aside}"
            raise FileExistsError(f"{out} already holds a run{hint}; pass --overwrite to replace it or choose "
                                  "another --out")
        check_replaceable(out)
    elif out.exists() and any(out.iterdir()) and not _holds_only_temporaries(out):
        raise FileExistsError(f"{out} exists and is not a run directory; choose an empty or new --out")


def prepare_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out`` for a new run; refuse to clobber an existing run unless ``overwrite`` (and
    then only a gateprobe run, see :func:`check_replaceable`)."""
    out = Path(out)
    check_new_run_dir(out, overwrite)
    if (out / "manifest.json").exists():
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):  # only temporaries: a recording killed while writing its manifest
        remove_temporaries(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # read-only or missing file system: one clear line
        raise type(err)(err.errno, f"cannot create the run folder ({err.strerror}); choose a writable --out",
                        str(out)) from None
    return out


_HELD: set[str] = set()  # lock files this process holds (a nested writer of the same run is the same writer)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created (deepest last)."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise type(err)(err.errno, f"cannot create the run folder ({err.strerror}); choose a writable --out",
                        str(folder)) from None
    return list(reversed(missing))


@contextmanager
def run_lock(out: str | Path):
    """Hold the advisory write lock of run folder ``out`` (``.NAME.lock`` beside it) for the block;
    :class:`RunError` naming the holder's pid when another process holds it."""
    check_not_dangling(out)
    lock = lock_path(Path(out))
    key = str(lock)
    if fcntl is None or key in _HELD:
        yield
        return
    created = _make_parents(lock.parent)
    fd = None
    try:
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as err:
                raise type(err)(err.errno, f"cannot create the lock file of the run folder ({err.strerror}); "
                                "choose a writable --out", str(lock)) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_pid(fd)
                os.close(fd)
                fd = None
                raise RunError(f"{out} is being written by another gateprobe process ({holder}); wait for it to "
                               f"finish or choose another --out (lock file {lock})") from None
            try:
                same = os.stat(lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # its previous holder removed the file meanwhile: lock the new one
            fd = None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except BaseException:
        if fd is not None:
            os.close(fd)
        _remove_empty(created)
        raise
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)
        if not Path(out).exists():
            _remove_empty(created)


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {int(text)}" if text.isdigit() else "pid unknown"


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


def _aside_state(aside: Path) -> str:
    """``complete`` (a complete run: maybe its only copy), ``leftover`` (a run's files, not complete:
    an interrupted clean-up) or ``foreign`` (something else, never touched)."""
    if aside.is_symlink() or not aside.is_dir():
        return "foreign"
    if _foreign_entries(aside):
        return "foreign"
    if (aside / "manifest.json").is_file():
        if run_problem(aside) is not None:
            return "foreign"
        return "complete" if _is_complete(aside) else "leftover"
    return "leftover"


def _restore(out: Path, aside: Path) -> None:
    """Put the run kept in ``aside`` back into ``out`` (removing what the failed command wrote)."""
    try:
        if out.exists() or out.is_symlink():
            shutil.rmtree(out)
        os.replace(aside, out)
    except OSError as err:
        print(f"note: the previous run could not be put back into {out} ({err.strerror or err}); it is kept in "
              f"{aside}", file=sys.stderr)


def replaces_safely(fn):
    """Decorate a function writing a run into its ``out`` argument: it runs holding the run's lock
    (:func:`run_lock`), and with ``overwrite`` the run already there survives a failure: it is
    moved aside to ``.NAME.replaced`` (beside ``out``) first, put back if the function raises, and
    deleted once the new run is written. A process killed meanwhile leaves the old run in
    ``.NAME.replaced``; a later ``--overwrite`` keeps that copy until it has a complete new run."""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        out = Path(arguments["out"])
        with run_lock(out):
            if not arguments.get("overwrite"):
                return fn(*args, **kwargs)
            aside = aside_path(out)
            if aside.exists() or aside.is_symlink():
                state = _aside_state(aside)
                if state == "foreign":
                    raise RunError(f"{aside} is in the way of --overwrite and is not a run gateprobe set aside; "
                                   "move it away, then run again")
                if state == "leftover":  # an interrupted clean-up: not a complete copy of anything
                    shutil.rmtree(aside)
                elif _is_complete(out):
                    raise RunError(f"an earlier --overwrite of {out} was interrupted: {out} and {aside} both hold "
                                   f"complete runs; keep the one you want (delete {aside}, or move it back to "
                                   f"{out}), then run again")
                else:  # the aside is the only complete copy: keep it until a new run is complete
                    if (out / "manifest.json").exists():
                        check_replaceable(out)
                    return _keeping(fn, args, kwargs, out, aside)
            if not (out / "manifest.json").exists():
                return fn(*args, **kwargs)
            check_replaceable(out)
            os.replace(out, aside)
            return _keeping(fn, args, kwargs, out, aside)

    return wrapper


def _keeping(fn, args, kwargs, out: Path, aside: Path):
    """Run ``fn`` while the previous run waits in ``aside``: put back on failure, deleted on success."""
    try:
        result = fn(*args, **kwargs)
    except BaseException:
        _restore(out, aside)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return result


def write_manifest(out: Path, manifest: dict) -> None:
    write_json(out / "manifest.json", manifest)


def _holds_only_temporaries(out: Path) -> bool:
    """Whether every entry of ``out`` is a temporary left by an interrupted atomic write."""
    return all(entry.is_file() and is_temporary(entry.name) for entry in out.iterdir())


def remove_temporaries(out: Path) -> None:
    """Delete what interrupted atomic writes left anywhere under ``out``."""
    for tmp in out.rglob(".*"):
        if tmp.is_file() and is_temporary(tmp.name):
            os.unlink(tmp)
