"""Property-based fuzzing of everything that reads files a user hands to gateprobe.

Whatever the bytes, the loaders raise only the project's documented errors -- ``DataError``
(:class:`probe.data.FolderDataset`), ``CheckpointError`` (:func:`probe.load_model`),
``RunError`` (:func:`probe.load_run` and a run's tables and samples), all ``ValueError``
subclasses with a message saying what to fix -- or succeed; never another exception type and never
a hang (every example runs under a 20 s alarm). Inputs are random bytes, truncations and byte
flips of valid files, and valid files with random content (image modes and sizes, label values,
JSON documents). ``max_examples`` is modest so the module runs in seconds; raise it with
``GATEPROBE_FUZZ_EXAMPLES``.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from probe.data import DataError, FolderDataset, collate
from probe.errors import CheckpointError, RunError
from probe.models import create_model
from probe.models.checkpoints import CARD, WEIGHTS, load_model, save_checkpoint
from probe.recording.loop import record
from probe.rundir.run import TABLES, load_run

EXAMPLES = int(os.environ.get("GATEPROBE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    """Fail (TimeoutError) instead of hanging."""
    def alarm(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_documented_errors_are_value_errors():
    assert all(issubclass(e, ValueError) for e in (DataError, CheckpointError, RunError))


# ============================================================================ strategies
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")
BYTES_PER_PIXEL = {"1": 1, "L": 1, "LA": 2, "P": 1, "RGB": 3, "RGBA": 4, "I;16": 2}


def _encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def png_bytes(draw, size: tuple[int, int] | None = None, max_side: int = 6, small_values: bool = False):
    """A valid PNG (or JPEG) of a random mode and content, ``size`` ``(w, h)`` or random;
    ``small_values``: pixel values 0..3 (class ids)."""
    mode = draw(st.sampled_from(PNG_MODES))
    w, h = size or (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    if small_values and mode in ("L", "P", "I;16"):
        values = draw(st.lists(st.integers(0, 3), min_size=w * h, max_size=w * h))
        array = np.asarray(values, dtype=np.uint16 if mode == "I;16" else np.uint8).reshape(h, w)
        image = Image.fromarray(array) if mode != "P" else Image.fromarray(array, "P")
    else:
        raw = draw(st.binary(min_size=w * h * BYTES_PER_PIXEL[mode], max_size=w * h * BYTES_PER_PIXEL[mode]))
        image = Image.frombytes(mode, (w, h), raw)
    fmt = draw(st.sampled_from(["PNG", "PNG", "JPEG"])) if mode in ("L", "RGB") else "PNG"
    return _encode(image, fmt)


@st.composite
def damaged(draw, valid: bytes):
    """``valid`` truncated, with some bytes flipped, or replaced by random bytes."""
    how = draw(st.sampled_from(["truncate", "flip", "random", "same"]))
    if how == "truncate":
        return valid[: draw(st.integers(0, max(len(valid) - 1, 0)))]
    if how == "flip":
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 8))):
            if data:
                i = draw(st.integers(0, len(data) - 1))
                data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if how == "random":
        return draw(st.binary(max_size=400))
    return valid


def image_file():
    return st.one_of(png_bytes(), png_bytes().flatmap(lambda b: damaged(b)), st.binary(max_size=200))


@st.composite
def item_files(draw):
    """(image, label, mask) bytes of one item: mostly valid files of one size, sometimes of other
    sizes, damaged, random or (label, mask) absent."""
    size = (draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    kind = draw(st.sampled_from(["valid", "valid", "valid", "other", "other"]))
    if kind == "valid":
        image = draw(png_bytes(size))
        label = draw(st.one_of(png_bytes(size, small_values=True), png_bytes(size, small_values=True), st.none()))
        mask = draw(st.one_of(png_bytes(size), st.none(), st.none()))
        return image, label, mask
    return (draw(image_file()), draw(st.none() | image_file() | png_bytes(small_values=True)),
            draw(st.none() | image_file()))


CLASSES_TXT = st.one_of(st.just(b"sky\ngrass\nbox\nwater\n"), st.just(b"a\n\n b \nc\r\nd"), st.none(),
                        st.binary(max_size=40), st.text(max_size=40).map(str.encode))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10 ** 6, 10 ** 6) | st.floats(allow_nan=True)
                    | st.text(max_size=12),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children,
                                                                                      max_size=4),
                    max_leaves=12)


# ============================================================================ FolderDataset
def _write_folder(root: Path, images: list, labels: list, masks: list, classes: bytes) -> None:
    for sub in ("images", "labels", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k, blob in enumerate(images):
        (root / "images" / f"i{k}.png").write_bytes(blob)
    for k, blob in enumerate(labels):
        if blob is not None:
            (root / "labels" / f"i{k}.png").write_bytes(blob)
    for k, blob in enumerate(masks):
        if blob is not None:
            (root / "masks" / f"i{k}.png").write_bytes(blob)
    if classes is not None:
        (root / "classes.txt").write_bytes(classes)


@FUZZ
@given(items=st.lists(item_files(), min_size=0, max_size=3), classes=CLASSES_TXT,
       threshold=st.sampled_from([0.5, 0.01, 1.0]))
def test_folder_dataset_raises_only_data_errors(items, classes, threshold):
    with tempfile.TemporaryDirectory() as tmp, no_hang():
        root = Path(tmp)
        _write_folder(root, [i for i, _, _ in items], [x for _, x, _ in items], [m for _, _, m in items], classes)
        try:
            data = FolderDataset(root, mask_threshold=threshold)
            loaded = []
            for i in range(len(data)):
                try:
                    loaded.append(data[i])
                except DataError as err:
                    event("item DataError: " + str(err).split(": ", 1)[-1][:30])
                    continue
                item = loaded[-1]
                assert item["image"].shape[0] == 3 and torch.isfinite(item["image"]).all()
                assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
                assert set(item["hole"].unique().tolist()) <= {0.0, 1.0}
                assert 0 <= int(item["labels"].min()) and int(item["labels"].max()) < len(data.classes)
            if loaded:
                try:
                    collate(loaded)
                except DataError as err:
                    assert "different sizes" in str(err)
            event(f"{len(loaded)} item(s) loaded")
        except DataError as err:
            event("DataError: " + str(err).split(": ", 1)[-1][:30])
            assert str(err) and "\n" not in str(err).strip()


# ============================================================================ load_model
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz-checkpoint") / "ck"
    torch.manual_seed(0)
    save_checkpoint(create_model("pconv-scenes", width=4, image_size=32), folder)
    return folder


def _card_document(draw, card: dict):
    """A card: valid, with a field replaced by random JSON, or random JSON altogether."""
    how = draw(st.sampled_from(["valid", "field", "config", "json"]))
    if how == "valid":
        return dict(card)
    if how == "field":
        return dict(card, **{draw(st.sampled_from(sorted(card) + ["extra"])): draw(JSON)})
    if how == "config":
        config = draw(st.dictionaries(st.sampled_from(["width", "image_size", "depth", "x"]),
                                      st.integers(-3, 300) | st.floats(allow_nan=True) | st.text(max_size=4),
                                      max_size=3))
        return dict(card, config=config, model=draw(st.sampled_from([card["model"], "gated-scenes", "nope"])))
    return draw(JSON)


@FUZZ
@given(data=st.data())
def test_load_model_raises_only_checkpoint_errors(checkpoint, data):
    import hashlib

    valid_weights = (checkpoint / WEIGHTS).read_bytes()
    valid_card = json.loads((checkpoint / CARD).read_text())
    weights = data.draw(damaged(valid_weights))
    document = _card_document(data.draw, valid_card)
    if isinstance(document, dict) and data.draw(st.booleans()):
        document["sha256"] = hashlib.sha256(weights).hexdigest()  # get past the hash check to the parser
    card = json.dumps(document, allow_nan=True).encode()
    card = data.draw(st.sampled_from([card, card[: len(card) // 2], b"\xff\xfe" + card]))
    with tempfile.TemporaryDirectory() as tmp, no_hang():
        folder = Path(tmp) / "ck"
        folder.mkdir()
        (folder / WEIGHTS).write_bytes(weights)
        (folder / CARD).write_bytes(card)
        for verify in (True, False):
            try:
                model = load_model(folder, verify=verify)
                event("loaded")
            except CheckpointError as err:
                event("CheckpointError: " + str(err).split(": ", 1)[-1][:30])
                assert str(err)
            else:
                assert all(torch.isfinite(p).all() for p in model.parameters())


# ============================================================================ the run reader
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-run") / "run"
    torch.manual_seed(0)
    record(create_model("gated-scenes", width=4, image_size=32), "scenes:32", out, n=4, batch_size=2, samples=2,
           progress=False)
    return out


def _read_everything(path: Path) -> None:
    run = load_run(path)
    for name in TABLES:
        getattr(run, name)
    run.classes, run.n_samples
    for name in ("image", "hole", "labels", "index"):
        np.asarray(run.sample_input(name))
    for layer in run.manifest["layers"]:
        np.asarray(run.sample_map(layer, "gate"))


@FUZZ
@given(data=st.data())
def test_run_reader_raises_only_run_errors(run_dir, data):
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()
                   if p.suffix in (".json", ".parquet", ".npy"))
    target = data.draw(st.sampled_from(files))
    with tempfile.TemporaryDirectory() as tmp, no_hang():
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy)
        valid = (copy / target).read_bytes()
        if target == "manifest.json" and data.draw(st.booleans()):
            manifest = json.loads(valid)
            key = data.draw(st.sampled_from(sorted(manifest)))
            if isinstance(manifest[key], dict) and manifest[key] and data.draw(st.booleans()):
                inner = data.draw(st.sampled_from(sorted(manifest[key])))
                manifest[key][inner] = data.draw(JSON)
            else:
                manifest[key] = data.draw(JSON)
            blob = json.dumps(manifest, allow_nan=True).encode()
        else:
            blob = data.draw(damaged(valid))
        (copy / target).write_bytes(blob)
        try:
            _read_everything(copy)
            event("read")
        except RunError as err:
            event("RunError: " + str(err).split(": ", 1)[-1][:30])
            assert str(err)
