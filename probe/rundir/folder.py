"""The life of a run folder on disk: create it for a new run, replace an old run safely, write
the manifest, clean up what an interrupted write left behind."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .files import is_temporary, write_json


def prepare_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out`` for a new run; refuse to clobber an existing run unless ``overwrite``."""
    out = Path(out)
    if (out / "manifest.json").exists():
        if not overwrite:
            hint = "" if _is_complete(out) else " (an incomplete one: pass --resume to continue it)"
            raise FileExistsError(f"{out} already holds a run{hint}; pass --overwrite to replace it or choose "
                                  "another --out")
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()):
        if _holds_only_temporaries(out):  # a recording killed while writing its manifest: start afresh
            remove_temporaries(out)
        else:
            raise FileExistsError(f"{out} exists and is not a run directory; choose an empty or new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # read-only or missing file system: one clear line
        raise type(err)(err.errno, f"cannot create the run folder ({err.strerror}); choose a writable --out",
                        str(out)) from None
    return out


def _is_complete(out: Path) -> bool:
    try:
        return bool(json.loads((out / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError, AttributeError):
        return False


def replaces_safely(fn):
    """Decorate a function writing a run into its ``out`` argument so that, with ``overwrite``, the
    run already there survives a failure: it is moved aside to ``.NAME.replaced`` (beside ``out``)
    first, put back if the function raises, and deleted once the new run is written. (A process
    killed meanwhile leaves the old run in ``.NAME.replaced``.)"""
    import functools
    import inspect

    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        arguments = signature.bind(*args, **kwargs).arguments
        out = Path(arguments["out"])
        if not arguments.get("overwrite") or not (out / "manifest.json").exists():
            return fn(*args, **kwargs)
        aside = out.with_name(f".{out.name}.replaced")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(out, aside)
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            os.replace(aside, out)
            raise
        shutil.rmtree(aside, ignore_errors=True)
        return result

    return wrapper


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
