"""The settings of a recording, and what makes two runs the same recording.

:class:`RecordSettings` is the one place where the recording settings, their defaults and their
valid ranges live: :func:`probe.record`, the Ray driver and its workers, ``--resume``, ``merge``
and the benchmarks all build or read it, and it is stored in ``manifest["settings"]``.
:func:`run_identity` decides whether two runs may be merged (shards of one recording) or one
resumed by a command: the same model weights, data, settings and layers.

(It lives in :mod:`probe.rundir`, not in :mod:`probe.recording`, because it is part of the run
directory's contract and ``merge`` reads it; ``rundir`` imports no model code.)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from ..errors import SettingsError
from ..stats.histograms import DEFAULT_BINS


@dataclass(frozen=True)
class RecordSettings:
    """How a run is recorded (stored in ``manifest["settings"]``).

    Attributes:
        batch_size: images per forward pass (also the calibration batches).
        samples: the first K images whose maps are stored in ``samples/``.
        quantile: the top quantile whose threshold defines the IoU (Network Dissection: 0.005).
        bins: gate histogram bins per channel (:mod:`probe.stats.histograms`).
        calibration: the first images of the data (positions 0.., whatever the shard) on which
            each channel's logit range is measured before recording.
        groups: image groups for image-level tests and intervals.
        group_by: how images are put into groups: ``image`` (position modulo ``groups``: for i.i.d.
            items such as generated Scenes), ``block`` (``groups`` contiguous blocks of positions:
            related images stored side by side, e.g. frames or name-sorted folders, stay in one
            group), or ``auto`` (``image`` for Scenes, ``block`` for everything else).
        border: width, in cells of each layer, of the valid band around the hole.
        sketch: feed the sketch; ``None`` (before :meth:`resolved`) means "when the model takes one".
        layers: comma-separated shell patterns of layer names to record (``None``: all).
        gate_activations: names of activations (op or module class) that discovery should also take
            as gates, besides sigmoid and hard-sigmoid (``--gate-activation``).
        dtype: the precision of the model's forward pass (``float32``, ``bfloat16``, ``float16``:
            autocast); statistics accumulate in float32/float64/int64 whatever it is.
        iou_pass: the second pass over the images that makes the IoU exact
            (:mod:`probe.recording.iou_pass`, about one more forward per image): ``auto`` runs it
            on the gated layers whose label statistics are coarser cells than their bins (more than
            8 labels at 512 bins), none otherwise; ``on`` on every gated layer; ``off`` never (the
            IoU is then read from the label statistics).
    """

    batch_size: int = 16
    samples: int = 8
    quantile: float = 0.005
    bins: int = DEFAULT_BINS
    calibration: int = 32
    groups: int = 32
    border: int = 2
    sketch: bool | None = None
    layers: str | None = None
    group_by: str = "auto"
    gate_activations: tuple[str, ...] = ()
    dtype: str = "float32"
    iou_pass: str = "auto"

    def __post_init__(self):
        if isinstance(self.gate_activations, (list, str)):  # from JSON, or one name
            names = [self.gate_activations] if isinstance(self.gate_activations, str) else self.gate_activations
            object.__setattr__(self, "gate_activations", tuple(names))
        def whole(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SettingsError(f"--{name.replace('_', '-')} must be an integer >= {low}, not {value!r}")

        whole("batch_size", 1)
        whole("samples", 0)
        whole("bins", 2)
        whole("calibration", 1)
        whole("groups", 3)
        whole("border", 0)
        q = self.quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q < 1:
            raise SettingsError(f"--quantile must lie strictly between 0 and 1 (e.g. 0.005), not {q!r}")
        if self.sketch not in (None, True, False):
            raise SettingsError(f"sketch must be True, False or None (auto), not {self.sketch!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise SettingsError(f"--dtype must be float32, bfloat16 or float16, not {self.dtype!r}")
        if self.iou_pass not in IOU_PASSES:
            raise SettingsError(f"--iou-pass must be one of {', '.join(IOU_PASSES)}, not {self.iou_pass!r}")
        if self.group_by not in GROUPINGS:
            raise SettingsError(f"--groups must be one of {', '.join(GROUPINGS)}, not {self.group_by!r}")
        if self.layers is not None and (not isinstance(self.layers, str) or not self.layers.strip()):
            raise SettingsError(f"--layers must be comma-separated name patterns, not {self.layers!r}")

    def resolved(self, accepts_sketch: bool, model_name: str = "the model", data_kind: str = "") -> "RecordSettings":
        """These settings with ``sketch`` decided for a model (``accepts_sketch``) and ``group_by``
        for the data (``data_kind``, the ``kind`` of its spec)."""
        if self.sketch and not accepts_sketch:
            raise SettingsError(f"{model_name} takes no sketch; record it without --sketch (or --sketch off)")
        group_by = self.group_by if self.group_by != "auto" else ("image" if data_kind == "scenes" else "block")
        return self.replace(sketch=accepts_sketch if self.sketch is None else self.sketch, group_by=group_by)

    def group_of(self, position: int, n: int) -> int:
        """The image group of the image at ``position`` of ``n`` (after :meth:`resolved`)."""
        if self.group_by == "block":
            return position * self.groups // n
        return position % self.groups

    def replace(self, **changes) -> "RecordSettings":
        return RecordSettings(**(asdict(self) | changes))

    def to_dict(self) -> dict:
        """The manifest form (a JSON object)."""
        return asdict(self) | {"gate_activations": list(self.gate_activations)}

    @classmethod
    def from_dict(cls, settings: dict) -> "RecordSettings":
        """Settings read back from a manifest (unknown keys are an error: a newer gateprobe's run)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - names)
        if unknown:
            raise SettingsError(f"unknown recording settings {unknown}; was the run recorded by a newer gateprobe?")
        return cls(**settings)


GROUPINGS = ("auto", "image", "block")
IOU_PASSES = ("auto", "on", "off")

# the parts of the model entry that identify its weights (not where they were loaded from)
MODEL_IDENTITY = ("name", "class", "weights_sha256", "parameters", "accepts_sketch")
RUN_IDENTITY = ("schema_version", "data", "settings", "layers")


def run_identity(manifest: dict) -> dict:
    """What two manifests must share to be one recording: the model's weights, the schema, the
    data spec, the settings and the layers recorded. Merging shards also needs equal image sizes;
    resuming also needs the same shard and sample count (the callers add those)."""
    model = manifest.get("model") or {}
    return {"model": {k: model.get(k) for k in MODEL_IDENTITY}, **{k: manifest.get(k) for k in RUN_IDENTITY}}


def identity_differences(a: dict, b: dict, extra: tuple[str, ...] = ()) -> list[str]:
    """The keys of :func:`run_identity` (plus ``extra`` manifest keys) in which manifests ``a`` and ``b`` differ."""
    ia, ib = run_identity(a), run_identity(b)
    return [k for k in ia if ia[k] != ib[k]] + [k for k in extra if a.get(k) != b.get(k)]
