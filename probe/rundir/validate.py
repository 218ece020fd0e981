"""Checks made when a run directory is read: is it still what ``record`` (or ``merge``) wrote?

A run folder may have been edited, truncated or assembled by hand, and a table that reads is not
yet a table that means what its columns say (an AUC of 7.5, every row twice, a column of text).
Each check raises a :class:`~probe.errors.RunError` of one line naming the file and the problem,
so that no claim, report or merge is ever computed from such a run:

* :func:`check_manifest`: the fields readers rely on have their types; the image size is positive;
  ``samples`` and ``n_images`` are counts, and ``n_images`` is the sum of the ``shards`` spans
  where shards are listed; ``table_sha256`` (written since runs record it) maps table files to
  hex digests.
* :func:`check_digest`: a table whose bytes no longer hash to the sha256 in ``table_sha256`` is
  named as changed since it was written (runs recorded before the hashes have none: not checked).
* :func:`check_table`: the columns and dtypes of :data:`~probe.rundir.tables.CHANNEL_COLUMNS`,
  :data:`~probe.rundir.tables.LABEL_COLUMNS`, :data:`~probe.rundir.tables.EVOLUTION_COLUMNS` and
  :data:`LAYER_COLUMNS` (extra columns are allowed), value ranges (:data:`SCHEMAS`; AUCs, fractions
  and p/q-values in [0, 1] with NaN where a statistic can be undefined, integer columns >= 0
  unless stated, floats finite or NaN; a column of :attr:`TableSchema.optional`, which runs written
  before it lack, only where present), unique keys, and the rows the manifest and the layers
  table imply: the layers table names exactly the manifest's layers, ``channels`` holds channels
  0..C-1 of every gated layer, ``labels`` every (channel, class) pair with the manifest's class
  names, ``evolution`` every partial layer.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunError
from .tables import CHANNEL_COLUMNS, EVOLUTION_COLUMNS, LABEL_COLUMNS

DIGESTS = "table_sha256"  # manifest key: table file name -> sha256 of its bytes as written
_HEX = re.compile(r"[0-9a-f]{64}")
_FIX = "the run was edited or damaged; record it again"


@dataclass(frozen=True)
class Bounds:
    """The values a numeric column may hold: ``[low, high]``, and NaN only where ``nan``."""

    low: float = -np.inf
    high: float = np.inf
    nan: bool = True

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]"


UNIT = Bounds(0.0, 1.0)  # AUCs, fractions, p- and q-values: NaN where the statistic is undefined
DEFINED_UNIT = Bounds(0.0, 1.0, nan=False)  # fractions of a partial layer's mask
SIGNED_UNIT = Bounds(-1.0, 1.0)  # differences of two AUCs
COUNT = Bounds(0, nan=False)  # the default of integer columns (ids, counts, sizes)
POSITIVE = Bounds(1, nan=False)
DEFINED = Bounds(nan=False)
FINITE = Bounds()  # the default of float columns


@dataclass(frozen=True)
class TableSchema:
    """One table: ``columns`` (name -> dtype: ``np.int64``, ``np.float64``, ``bool`` or ``object``),
    its unique ``key``, the :class:`Bounds` of numeric columns that differ from the defaults, and
    ``lists``: the object columns that hold arrays of numbers (with their elements' bounds); every
    other object column holds text. ``optional``: the columns that runs written before them lack
    (checked where present)."""

    columns: dict
    key: tuple[str, ...]
    bounds: dict = field(default_factory=dict)
    lists: dict = field(default_factory=dict)
    optional: tuple[str, ...] = ()

    def kind(self, column: str) -> str:
        """The numpy kind of ``column``'s dtype: ``i`` integer, ``f`` float, ``b`` bool, ``O`` object."""
        return np.dtype(self.columns[column]).kind

    def bounds_of(self, column: str) -> Bounds:
        return self.bounds.get(column, COUNT if self.kind(column) in "iu" else FINITE)


LAYER_COLUMNS = {"layer": object, "kind": object, **{c: np.int64 for c in (
    "depth", "channels", "height", "width", "kernel", "stride", "dilation", "receptive_field")},
    "found_by": object, "activation": object, "binned": object, "effective_channels": np.float64}
LAYER_KINDS = ("gated", "partial")


def _schema(columns: dict, key: tuple, bounds: dict, lists: dict | None = None,
            optional: tuple[str, ...] = ()) -> TableSchema:
    """A schema over ``columns`` (the writer's own dictionary), keeping only the bounds, lists and
    optional columns it still has."""
    return TableSchema(columns, key, {c: b for c, b in bounds.items() if c in columns},
                       {c: b for c, b in (lists or {}).items() if c in columns},
                       tuple(c for c in optional if c in columns))


SCHEMAS = {
    "layers": _schema(LAYER_COLUMNS, ("layer",), {
        **{c: POSITIVE for c in ("channels", "height", "width", "kernel", "stride", "dilation", "receptive_field")},
        "effective_channels": Bounds(0.0)}),
    "channels": _schema(CHANNEL_COLUMNS, ("layer", "channel"), {
        **{c: UNIT for c in ("auc_hole", "auc_sketch", "auc_hole_error", "soft_fraction", "p_hole", "p_sketch",
                             "q_hole", "q_sketch")},
        "mean": DEFINED, "std": Bounds(0.0, nan=False), "threshold": DEFINED}),
    # keys in the order the writer's rows follow (see _has_repeats); label_id names the label
    "labels": _schema(LABEL_COLUMNS, ("layer", "label_id", "channel"), {
        **{c: UNIT for c in ("auc", "auc_error", "trivial_auc", "joint_trivial_auc", "p_value", "q_value")},
        "joint_difference": SIGNED_UNIT,  # its interval's ends may lie beyond +-1: finite or NaN
        "iou": UNIT, "threshold": DEFINED},
        optional=("iou_exact",)),  # written since the IoU pass (probe.recording.iou_pass)
    "evolution": _schema(EVOLUTION_COLUMNS, ("layer",), {
        **{c: DEFINED_UNIT for c in ("valid_fraction", "valid_fraction_std", "valid_fraction_predicted",
                                     "all_valid_images", "all_valid_images_predicted")},
        "height": POSITIVE, "width": POSITIVE, "window": Bounds(1.0, nan=False),
        "leak": Bounds(0.0)},  # NaN where the layer's output is not seen
        lists={"valid_fraction_hist": COUNT, "group_valid_fraction": UNIT, "group_images": COUNT,
               "coverage_hist": COUNT, "coverage_edges": DEFINED_UNIT}),
}


# ============================================================================ the manifest
def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_shards(path: Path, shards) -> list[dict]:
    """``shards`` as a manifest lists them: a non-empty list of ``{shard: [i, N], start, stop}``."""
    good = isinstance(shards, list) and shards and all(
        isinstance(s, dict) and _whole(s.get("start")) and _whole(s.get("stop")) and 0 <= s["start"] < s["stop"]
        and isinstance(s.get("shard"), list) and len(s["shard"]) == 2 and all(_whole(v) for v in s["shard"])
        and 0 <= s["shard"][0] < s["shard"][1] for s in shards)
    if not good:
        raise RunError(f"{path}: 'shards' is {shards!r}, not a list of the images the run recorded ({{\"shard\": "
                       "[I, N], \"start\": ..., \"stop\": ...}); the run is damaged, record it again")
    return shards


def check_manifest(path: Path, manifest: dict) -> None:
    """The manifest fields every reader relies on (see the module docstring); a :class:`RunError`
    listing what is wrong otherwise."""
    data, model, layers = manifest.get("data"), manifest.get("model"), manifest.get("layers")
    problems = []
    if not isinstance(model, dict):
        problems.append("model is not an object")
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not all(
            isinstance(c, str) for c in data["classes"]):
        problems.append("data.classes is not a list of names")
    if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
        problems.append("layers is not a list of names")
    elif len(set(layers)) < len(layers):
        problems.append("layers names a layer twice")
    if not isinstance(manifest.get("settings"), dict):
        problems.append("settings is not an object")
    size = manifest.get("image_size")
    if not isinstance(size, list) or len(size) != 2 or not all(_whole(v) and v > 0 for v in size):
        problems.append(f"image_size is {size!r}, not [height, width] in pixels (> 0)")
    for key in ("n_images", "samples"):
        value = manifest.get(key, 0)
        if not _whole(value) or value < 0:
            problems.append(f"{key} is {value!r}, not an integer >= 0")
    if not problems and manifest.get("samples", 0) > manifest.get("n_images", 0):
        problems.append(f"samples {manifest['samples']} exceeds n_images {manifest['n_images']}")
    digests = manifest.get(DIGESTS)
    if digests is not None and not (isinstance(digests, dict) and all(
            isinstance(k, str) and isinstance(v, str) and _HEX.fullmatch(v) for k, v in digests.items())):
        problems.append(f"{DIGESTS} is not a map of table files to sha256 digests")
    if problems:
        raise RunError(f"{path}: corrupt manifest ({'; '.join(problems)}); record the run again")
    if "shards" in manifest:
        spans = sum(s["stop"] - s["start"] for s in check_shards(path, manifest["shards"]))
        if spans != manifest.get("n_images"):
            raise RunError(f"{path}: corrupt manifest (n_images is {manifest.get('n_images')!r} but its shards "
                           f"hold {spans} images); {_FIX}")


def check_digest(path: Path, content: bytes, manifest: dict) -> None:
    """``content`` (the bytes of table ``path``) hashes to the sha256 the manifest recorded for it."""
    expected = (manifest.get(DIGESTS) or {}).get(path.name)
    if expected is not None and hashlib.sha256(content).hexdigest() != expected:
        raise RunError(f"{path}: changed since the run was written (its sha256 is not the one manifest.json "
                       f"records); {_FIX}")


# ============================================================================ the tables
def check_table(path: Path, name: str, frame: pd.DataFrame, manifest: dict, layers: pd.DataFrame | None) -> None:
    """Table ``name`` (read from ``path``) against its schema, the manifest and (for every table
    but ``layers`` itself) the run's checked ``layers`` table."""
    schema = SCHEMAS[name]
    dtypes = dict(zip(frame.columns, frame.dtypes))
    missing = [c for c in schema.columns if c not in dtypes and c not in schema.optional]
    if missing:
        raise RunError(f"{path}: no column(s) {', '.join(missing)}; {_FIX}")
    present = [c for c in schema.columns if c in dtypes]
    for column in present:
        problem = _column_problem(frame, column, dtypes[column], schema)
        if problem:
            raise RunError(f"{path}: column {column!r} {problem}; {_FIX}")
    numeric = [c for c in present if schema.kind(c) in "iuf"]
    problem = _bounds_problem(frame[numeric].to_numpy(dtype=np.float64), [schema.bounds_of(c) for c in numeric]) \
        if len(frame) else None
    if problem:
        raise RunError(f"{path}: column {numeric[problem[0]]!r} {problem[1]} at row {problem[2]}; {_FIX}")
    layer = pd.factorize(frame.layer)  # (codes, names): for the key and the rows of each layer
    if _has_repeats(frame, schema, {"layer": layer[0]}):
        repeated = frame.duplicated(list(schema.key))
        row = frame[repeated].iloc[0]
        raise RunError(f"{path}: {int(repeated.sum())} repeated row(s) of ({', '.join(schema.key)}), e.g. "
                       f"{tuple(row[k] for k in schema.key)!r}; {_FIX}")
    if name == "layers":
        _check_layers(path, frame, manifest)
    elif name == "evolution":
        _rows_per_layer(path, layer, dict.fromkeys(_channels_of(layers, "partial"), 1), "partial layer")
    else:
        _check_channel_rows(path, frame, layer, _channels_of(layers, "gated"),
                            manifest["data"]["classes"] if name == "labels" else None)


def _has_repeats(frame: pd.DataFrame, schema: TableSchema, codes: dict[str, np.ndarray]) -> bool:
    """Whether two rows share their key values. Each key column is a code >= 0: its integers
    (checked >= 0 by then), the given ``codes``, or factorised. The rows of a recorded table come
    in key order, so the combined codes increase and one pass shows it; otherwise they are sorted."""
    if not len(frame):
        return False
    columns = [codes[c] if c in codes else frame[c].to_numpy() if schema.kind(c) in "iu" else pd.factorize(frame[c])[0]
               for c in schema.key]
    flat = np.ravel_multi_index(columns, [int(c.max()) + 1 for c in columns])
    return not (flat[1:] > flat[:-1]).all() and len(np.unique(flat)) < len(flat)


def _column_problem(frame: pd.DataFrame, column: str, dtype, schema: TableSchema) -> str | None:
    """What is wrong with one column's dtype (and the values of text and list columns); None: nothing."""
    expected = schema.kind(column)
    if expected != "O":
        if dtype.kind not in ("iu" if expected in "iu" else expected):
            return f"is {dtype}, not {np.dtype(schema.columns[column])}"
        return None
    values = frame[column]
    if column in schema.lists:
        return _list_problem(values, schema.lists[column])
    text = isinstance(dtype, pd.StringDtype) or pd.api.types.infer_dtype(values, skipna=False) in ("string", "empty")
    if not text or values.hasnans:
        return "holds other values than text"
    return None


def _bounds_problem(values: np.ndarray, bounds: list[Bounds]) -> tuple[int, str, int] | None:
    """The first value of ``values`` ``[rows, columns]`` outside its column's ``bounds``: (column,
    what is wrong, row); None when every value is within them. Columns are screened by their
    extremes; only a failing one is searched for its row."""
    low, high = (np.array([getattr(b, end) for b in bounds], dtype=np.float64) for end in ("low", "high"))
    nan_ok = np.array([b.nan for b in bounds])
    with np.errstate(invalid="ignore"):  # all-NaN columns
        least, most = np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    has_nan = np.isnan(values).any(axis=0)
    bad = (has_nan & ~nan_ok) | np.isinf(least) | np.isinf(most) | (least < low) | (most > high)
    if not bad.any():
        return None
    column = int(np.flatnonzero(bad)[0])
    array = values[:, column]
    row = int(np.flatnonzero((np.isnan(array) & ~nan_ok[column]) | np.isinf(array) | (array < low[column])
                             | (array > high[column]))[0])
    value = array[row]
    if np.isnan(value):
        return column, "holds NaN, which it never does in a recorded run,", row
    return column, f"holds {value:g}, " + ("not a finite number," if np.isinf(value) else
                                           f"outside {bounds[column].describe()},"), row


def _list_problem(values: pd.Series, bounds: Bounds) -> str | None:
    for at, value in enumerate(values):
        array = np.asarray(value) if isinstance(value, (list, np.ndarray)) else None
        if array is None or array.ndim != 1 or array.dtype.kind not in "iuf":
            return f"holds {type(value).__name__} at row {at}, not a list of numbers"
        problem = _bounds_problem(array.astype(np.float64)[:, None], [bounds]) if len(array) else None
        if problem:
            return f"{problem[1]} at position {problem[2]} of row {at}"
    return None


def _check_layers(path: Path, frame: pd.DataFrame, manifest: dict) -> None:
    if list(frame.layer) != manifest["layers"]:
        raise RunError(f"{path}: lists the layers {list(frame.layer)[:6]} but manifest.json records "
                       f"{manifest['layers'][:6]}; {_FIX}")
    foreign = sorted(set(frame.kind) - set(LAYER_KINDS))
    if foreign:
        raise RunError(f"{path}: layer kind(s) {foreign!r}, not one of {LAYER_KINDS}; {_FIX}")


def _channels_of(layers: pd.DataFrame, kind: str) -> dict[str, int]:
    """Layer name -> channels, of the layers of ``kind`` in the (checked) layers table."""
    return {name: int(c) for name, k, c in zip(layers.layer.to_numpy(), layers.kind.to_numpy(),
                                                 layers.channels.to_numpy()) if k == kind}


def _rows_per_layer(path: Path, layer: tuple, expected: dict[str, int], what: str) -> np.ndarray:
    """The rows (``layer``: their layers' codes and names) hold ``expected[name]`` rows of every
    layer of ``expected`` and none of another; returns ``expected`` of each row's layer."""
    codes, names = layer
    counts = dict(zip(names, np.bincount(codes, minlength=len(names)).tolist()))
    if counts != {name: n for name, n in expected.items() if n}:
        name = next(x for x in [*names, *expected] if counts.get(x, 0) != expected.get(x, 0))
        raise RunError(f"{path}: {counts.get(name, 0)} row(s) of layer {name!r}, but the layers table implies "
                       f"{expected.get(name, 0)} (one per {what}); {_FIX}")
    return np.array([expected[x] for x in names], dtype=np.int64)[codes]


def _check_channel_rows(path: Path, frame: pd.DataFrame, layer: tuple, channels: dict[str, int],
                        classes: list[str] | None) -> None:
    """Channels 0..C-1 of every gated layer (with ``classes``: each with every class, named as the
    manifest names its ids); with the unique keys, the counts and these ranges, every row is there."""
    per_channel = 1 if classes is None else len(classes)
    rows = _rows_per_layer(path, layer, {name: c * per_channel for name, c in channels.items()},
                           "channel" if classes is None else "(channel, class)")
    channel = frame.channel.to_numpy()
    over = np.flatnonzero(channel * per_channel >= rows)
    if len(over):
        at = int(over[0])
        raise RunError(f"{path}: layer {layer[1][layer[0][at]]!r} has channel {int(channel[at])}, but "
                       f"{int(rows[at]) // per_channel} channels; {_FIX}")
    if classes is None or not len(frame):
        return
    ids = frame.label_id.to_numpy()
    if ids.max() >= len(classes):
        raise RunError(f"{path}: label_id {int(ids.max())}, but the manifest names {len(classes)} classes; {_FIX}")
    codes, names = pd.factorize(frame.label)
    pairs = codes.astype(np.int64) * len(classes) + ids  # (name, id) of each row: few distinct ones
    wrong = [p for p in np.flatnonzero(np.bincount(pairs)) if names[p // len(classes)] != classes[p % len(classes)]]
    if wrong:
        at = int(np.flatnonzero(np.isin(pairs, wrong))[0])
        raise RunError(f"{path}: label {names[codes[at]]!r} at row {at} is not class {int(ids[at])} of the "
                       f"manifest ({classes[ids[at]]!r}); {_FIX}")
