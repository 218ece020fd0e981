"""Files of a run directory and of a checkpoint: every write goes to a temporary name beside its
target and is renamed into place, so a reader never sees half a file."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunError


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_TEMPORARY = re.compile(r"\..+\.tmp\d+")  # the names write_atomic writes to before its rename


def is_temporary(name: str) -> bool:
    """Whether ``name`` is one of :func:`write_atomic`'s temporaries (left behind only by a kill)."""
    return bool(_TEMPORARY.fullmatch(name))


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary name beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:  # disk full, read-only folder...: no temporary left behind, the old file intact
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if err.filename is None and err.errno is not None:  # say which file could not be written
            raise type(err)(err.errno, err.strerror or str(err), str(path)) from None
        raise


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_table(path: Path, frame: pd.DataFrame) -> str:
    """Write ``frame`` as Parquet to ``path``; returns the sha256 of the bytes written."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    content = buffer.getvalue()
    write_atomic(path, content)
    return hashlib.sha256(content).hexdigest()


def write_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


def safe_layer_file(layer: str) -> str:
    """File name of a layer's maps: the module path itself (dots kept), checked to stay inside."""
    if not layer or "/" in layer or "\\" in layer or layer.startswith("."):
        raise RunError(f"unsafe layer name {layer!r}")
    return f"{layer}.npy"
