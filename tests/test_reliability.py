"""Reliability and security (issues 10, 16, 29): bad input, crash safety, and the explorer's attack surface.

1. **Bad input** (:data:`BAD_INPUTS`, one table): each row builds a broken input, runs ``gateprobe
   record`` (or ``report``) through :func:`probe.cli.main` -- the function ``python -m probe``
   calls -- with ``--out`` on a complete run and ``--overwrite``, and expects exit code 2, exactly
   one ``gateprobe ...: error: ...`` line holding a phrase, no traceback, and the complete run
   byte-for-byte intact afterwards (nothing already written is damaged by a failing command).
   :data:`HANDLED_INPUTS` are inputs that look odd but must record: gray, RGBA and 16-bit images,
   soft masks (``--mask-threshold``), all-hole and no-hole masks (statistics that are undefined
   there are NaN, e.g. ``auc_hole``).
2. **Crash safety**: a recording interrupted (an exception, or SIGKILL at random moments of a
   separate process) leaves a run that ``--resume`` finishes into tables equal to an uninterrupted
   run's (integers exactly, floats to 1e-9 relative), or an incomplete run that ``load_run``
   refuses; never a table that fails to read. A full disk and a read-only output folder give one
   clear line and leave earlier files intact.
3. **The explorer**: binds 127.0.0.1 with debug off; serves only runs under its folder whatever the
   URL parameters; run, layer and class names (here HTML/JS payloads) reach figures and the
   report only escaped; request bodies are bounded; malformed requests get an error status with no
   stack trace.

The SIGKILL test kills forked copies of this process running ``probe.cli.main`` (the same code as
``python -m probe``, without paying an interpreter start-up per kill) at random moments, then
finishes the run with a real ``python -m probe record ... --resume`` subprocess.
"""
from __future__ import annotations

import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from html import escape as _escape
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from probe.cli import main
from probe.data import FolderDataset, parse_data
from probe.errors import RunError
from probe.layers import GatedConv2d
from probe.models import create_model
from probe.models.checkpoints import save_checkpoint
from probe.models.sources import resolve_model
from probe.recording.loop import record
from probe.recording.resume import PROGRESS, read_progress
from probe.rundir.files import sha256_file
from probe.rundir.run import TABLES, load_run

SIZE = 32
CLASSES = ("sky", "grass", "box")
EVIL_CLASS = "<img src=x onerror=alert(1)>"
EVIL_LAYER = "g<svg onload=alert(2)>"  # a module name (no dots, no slashes)
EVIL_RUN = "r<iframe srcdoc=x onload=alert(3)>"
EVIL = (EVIL_CLASS, EVIL_LAYER, EVIL_RUN)
ROOT = Path(__file__).resolve().parent.parent


# ============================================================================ helpers and fixtures
def make_folder(root: Path, n: int = 6, size: int | tuple = SIZE, classes=CLASSES, masks: dict | None = None,
                seed: int = 0) -> Path:
    """A labelled folder dataset: ``n`` RGB images ``i0..``, label maps using every class id, and
    optional masks (name -> uint8 array)."""
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    for sub in ("images", "labels", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"i{k}.png")
        labels = np.zeros((h, w), np.uint8)
        labels[h // 2:] = 1
        labels[2:h // 3, 2:w // 2] = len(classes) - 1
        Image.fromarray(labels).save(root / "labels" / f"i{k}.png")
    for name, mask in (masks or {}).items():
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def html_escape(text: str) -> str:
    return _escape(text, quote=False)


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> hex)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` in this process; returns (exit code, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def error_line(stderr: str) -> str:
    """The one error line of a failed command (progress bars aside): checks there is exactly one."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("gateprobe ")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


def assert_same_tables(a, b) -> None:
    """Integer columns equal exactly, float columns to 1e-9 relative (NaN where NaN)."""
    for name in TABLES:
        x, y = getattr(a, name), getattr(b, name)
        assert list(x.columns) == list(y.columns) and len(x) == len(y), name
        for column in x.columns:
            u, v = x[column].to_numpy(), y[column].to_numpy()
            if u.dtype.kind == "f":
                np.testing.assert_allclose(v, u, rtol=1e-9, atol=0, equal_nan=True, err_msg=f"{name}.{column}")
            elif u.dtype == object and len(u) and isinstance(u[0], (list, np.ndarray)):
                for p, q in zip(u, v):
                    np.testing.assert_allclose(np.asarray(q, float), np.asarray(p, float), rtol=1e-9,
                                               equal_nan=True, err_msg=f"{name}.{column}")
            else:
                assert list(u) == list(v), f"{name}.{column}"


EVIL_MODELS = '''
import torch
from probe.models import create_model


class NanOutput(torch.nn.Module):
    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.inner = create_model("pconv-scenes", width=8, image_size=32)

    def forward(self, image, hole, sketch=None):
        return self.inner(image, hole) * float("nan")


def nan_output():
    return NanOutput()


def nan_gates():
    model = create_model("gated-scenes", width=8, image_size=32)
    with torch.no_grad():
        model.encoder[2].gate.weight.fill_(float("nan"))
    return model


class Returns(torch.nn.Module):
    """pconv-scenes whose forward returns ``shape(output)`` instead of the output."""

    accepts_sketch = False

    def __init__(self, shape):
        super().__init__()
        self.inner, self.shape = create_model("pconv-scenes", width=8, image_size=32), shape

    def forward(self, image, hole, sketch=None):
        return self.shape(self.inner(image, hole))


def one_channel():
    return Returns(lambda out: out[:, :1])


def half_size():
    return Returns(lambda out: out[..., ::2, ::2])


def tuple_output():
    return Returns(lambda out: (out, out))


def none_output():
    return Returns(lambda out: None)


def failing_factory():
    raise ValueError("factory cannot build this")


class Broken(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("inner layer is broken")


class RaisesInside(torch.nn.Module):
    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.inner = create_model("pconv-scenes", width=8, image_size=32)
        self.broken = Broken()

    def forward(self, image, hole, sketch=None):
        return self.broken(self.inner(image, hole))


def raising_forward():
    return RaisesInside()


class Exits(torch.nn.Module):
    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.inner = create_model("pconv-scenes", width=8, image_size=32)

    def forward(self, image, hole, sketch=None):
        import sys
        sys.exit(3)


def exiting_forward():
    return Exits()


def slow():
    """pconv-scenes that sleeps 0.3 s per forward pass (a writer that holds its run for a while)."""
    import time

    class Slow(torch.nn.Module):
        accepts_sketch = False

        def __init__(self):
            super().__init__()
            self.inner = create_model("pconv-scenes", width=8, image_size=32)

        def forward(self, image, hole, sketch=None):
            time.sleep(0.3)
            return self.inner(image, hole)

    return Slow()
'''
USER_MODULES = {  # modules that misbehave at import
    "gp_exits_on_import": "import sys\nsys.exit(0)\n",
    "gp_raises_on_import": "raise RuntimeError('broken at import')\n",
    "gp_marker": "import os\nopen(os.environ['GP_MARKER'], 'w').write('ran')\nfrom gp_evil_models import raising_forward as build\n",
}


@dataclass
class Env:
    root: Path
    data: Path
    pconv: Path
    gated: Path
    precious: Path
    incomplete: Path
    precious_digest: dict = field(default_factory=dict)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Checkpoints of pconv-scenes and gated-scenes (width 8, 32x32), a folder dataset, a complete
    run (``precious``) that every failing command must leave intact, and an incomplete run."""
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    save_checkpoint(create_model("pconv-scenes", width=8, image_size=SIZE), root / "ckpt-pconv")
    save_checkpoint(create_model("gated-scenes", width=8, image_size=SIZE), root / "ckpt-gated")
    data = make_folder(root / "data")
    precious = root / "runs" / "precious"
    record(resolve_model(str(root / "ckpt-pconv")), f"folder:{data}", precious, batch_size=2, samples=2,
           progress=False)
    incomplete = root / "runs" / "halfway"
    shutil.copytree(precious, incomplete)
    manifest = json.loads((incomplete / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    (root / "modules").mkdir()
    (root / "modules" / "gp_evil_models.py").write_text(EVIL_MODELS)
    for name, text in USER_MODULES.items():
        (root / "modules" / f"{name}.py").write_text(text)
    sys.path.insert(0, str(root / "modules"))
    yield Env(root, data, root / "ckpt-pconv", root / "ckpt-gated", precious, incomplete, digest(precious))
    sys.path.remove(str(root / "modules"))


# ============================================================================ 1. bad input
def _copy_data(env: Env, scratch: Path, edit=None) -> str:
    folder = scratch / "data"
    shutil.copytree(env.data, folder)
    if edit is not None:
        edit(folder)
    return f"folder:{folder}"


def _copy_checkpoint(env: Env, scratch: Path, edit) -> str:
    folder = scratch / "ckpt"
    shutil.copytree(env.pconv, folder)
    edit(folder)
    return str(folder)


def _card(folder: Path, **changes) -> None:
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps(card | changes))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _image(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _resize(folder: Path, name: str, h: int, w: int) -> None:
    _image(folder / "images" / f"{name}.png", np.zeros((h, w, 3), np.uint8))
    _image(folder / "labels" / f"{name}.png", np.zeros((h, w), np.uint8))


def _resize_all(folder: Path, h: int, w: int) -> None:
    for path in (folder / "images").glob("*.png"):
        _resize(folder, path.stem, h, w)


def _nan_weights(folder: Path) -> None:
    model = create_model("pconv-scenes", width=8, image_size=SIZE)
    with torch.no_grad():
        model.enc_2.weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(model, folder)


class _Payload:
    """Pickles as a call of os.system: what a hostile .pth file holds."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _pickle_file(scratch: Path, hostile: bool) -> str:
    path = scratch / "generator.pth"
    torch.save({"G": _Payload(scratch / "PWNED") if hostile else {"w": torch.zeros(2)}}, path)
    return str(path)


@dataclass
class Bad:
    """One row of the bad-input table: ``argv(env, scratch)`` gives the command's arguments;
    ``phrase`` must be in its one error line. ``out`` False: the arguments name their own --out
    (otherwise ``--out PRECIOUS --overwrite`` is appended). ``code``: the exit code (2 for a
    mistake gateprobe recognises, 1 when the model itself refused the input)."""

    input: str
    argv: Callable
    phrase: str
    out: bool = True
    code: int = 2
    absent: tuple = ()  # phrases the error line must not hold


def _rec(env: Env, data: str | None = None, model: str | None = None, *extra) -> list:
    return ["record", "--model", model or env.pconv, "--data", data or f"folder:{env.data}", "--batch-size", "2",
            "--samples", "2", *extra]


BAD_INPUTS = [
    Bad("truncated PNG image",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: _truncate(f / "images" / "i3.png"))),
        "i3.png: not a readable image"),
    Bad("random bytes as an image",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: (f / "images" / "i1.png").write_bytes(os.urandom(300)))),
        "i1.png: not a readable image"),
    Bad("image size pconv-scenes cannot take (40x40; needs multiples of 2**depth = 16)",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: _resize_all(f, 40, 40))),
        "your model raised ValueError in PConvUNet during the calibration pass: pconv-scenes needs H and W "
        "divisible by 16, got (40, 40)", code=1),
    Bad("image size gated-scenes cannot take (30x30; needs multiples of 4)",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: _resize_all(f, 30, 30)), e.gated),
        "your model raised ValueError in GatedGenerator during the calibration pass: gated-scenes needs H and W "
        "divisible by 4, got (30, 30)", code=1),
    Bad("images of different sizes in one batch",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: _resize(f, "i1", 48, 48))),
        "images of different sizes"),
    Bad("mask of the wrong size",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: _image(f / "masks" / "i2.png", np.zeros((20, SIZE), "u1")))),
        f"mask is {SIZE}x20 but the image is {SIZE}x{SIZE}"),
    Bad("label map of the wrong size",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: _image(f / "labels" / "i4.png", np.zeros((SIZE, 30), "u1")))),
        f"label map is 30x{SIZE} but the image is {SIZE}x{SIZE}"),
    Bad("label id missing from classes.txt",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: (f / "classes.txt").write_text("sky\ngrass\n"))),
        "label value 2 is neither a class nor ignored; add its name to classes.txt (2 classes) or the id to ignore.txt"),
    Bad("empty classes.txt",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: (f / "classes.txt").write_text("\n \n"))),
        "classes.txt: no class names"),
    Bad("classes.txt not UTF-8",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: (f / "classes.txt").write_bytes(b"sky\n\xff\xfe\n"))),
        "classes.txt: not UTF-8 text"),
    Bad("empty dataset folder",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: [p.unlink() for p in (f / "images").glob("*")])),
        "images: no .png/.jpg images found"),
    Bad("image and label names that do not match",
        lambda e, s: _rec(e, _copy_data(e, s, lambda f: (f / "labels" / "i3.png").rename(f / "labels" / "x3.png"))),
        "labels/i3.png is missing; add the label maps or remove those images"),
    Bad("--n larger than the data",
        lambda e, s: _rec(e, None, None, "--n", "100"),
        "--n 100 is larger than the data (6 images)"),
    Bad("--mask-threshold outside (0, 1]",
        lambda e, s: _rec(e, None, None, "--mask-threshold", "1.5"),
        "mask threshold 1.5: expected a value in (0, 1]"),
    Bad("--mask-threshold with Scenes data",
        lambda e, s: _rec(e, "scenes:32", None, "--mask-threshold", "0.5"),
        "--mask-threshold applies to image folders and datasets, not to 'scenes:32'"),
    Bad("truncated model.safetensors",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _truncate(f / "model.safetensors"))),
        "sha256 does not match card.json"),
    Bad("truncated model.safetensors whose hash the card was changed to",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: (_truncate(f / "model.safetensors"), _card(
            f, sha256=sha256_file(f / "model.safetensors"))))),
        "not a readable safetensors file"),
    Bad("weights hash mismatch (one byte changed)",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: (f / "model.safetensors").write_bytes(
            (f / "model.safetensors").read_bytes()[:-1] + b"\x01"))),
        "sha256 does not match card.json"),
    Bad("card naming another architecture than the weights",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _card(f, model="gated-scenes"))),
        "weights do not fit gated-scenes: missing keys"),
    Bad("card with another width than the weights",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _card(f, config={"width": 16, "image_size": 32}))),
        "size mismatch"),
    Bad("card naming an unknown model",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _card(f, model="no-such-model"))),
        "the card does not describe a model this gateprobe can build"),
    Bad("NaN weights",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, _nan_weights)),
        "non-finite (NaN/inf) weights in ['enc_2.weight']"),
    Bad("a model whose outputs are NaN",
        lambda e, s: _rec(e, None, "gp_evil_models:nan_output"),
        "the model produced NaN or inf outputs"),
    Bad("a model whose gates are NaN",
        lambda e, s: _rec(e, None, "gp_evil_models:nan_gates"),
        "layer encoder.2: NaN or inf gate values"),
    Bad("pickle-based .pth without --trust-pickle",
        lambda e, s: _rec(e, None, "deepfillv2:" + _pickle_file(s, hostile=False)),
        "is a pickle-based PyTorch file (.pth/.pt/.ckpt), refused unless you pass --trust-pickle"),
    Bad("hostile pickle, even with --trust-pickle (weights_only=True refuses code)",
        lambda e, s: _rec(e, None, "deepfillv2:" + _pickle_file(s, hostile=True), "--trust-pickle"),
        "not a PyTorch checkpoint readable with weights_only=True"),
    Bad("--model import path that does not resolve",
        lambda e, s: _rec(e, None, "no.such:thing"),
        "--model 'no.such:thing': cannot import 'no.such'"),
    Bad("--model folder that does not exist",
        lambda e, s: _rec(e, None, str(s / "nowhere")),
        "not a checkpoint folder, a registry name"),
    Bad("--resume on a complete run",
        lambda e, s: _rec(e) + ["--out", e.precious, "--resume"],
        "the run is already complete; nothing to resume", out=False),
    Bad("--resume with other settings than the run was started with",
        lambda e, s: (shutil.copytree(e.incomplete, s / "run"), _rec(e) + ["--out", s / "run", "--resume",
                                                                          "--quantile", "0.01"])[1],
        "cannot resume: the run was started with different settings", out=False),
    Bad("--resume with a damaged checkpoint",
        lambda e, s: (shutil.copytree(e.incomplete, s / "run"), (s / "run" / PROGRESS).write_bytes(b"\x00" * 64),
                      _rec(e) + ["--out", s / "run", "--resume"])[2],
        "progress.safetensors: unreadable checkpoint", out=False),
    Bad("--resume and --overwrite together",
        lambda e, s: _rec(e, None, None, "--resume"),
        "--resume continues the run in --out and --overwrite replaces it"),
    Bad("report of an incomplete run",
        lambda e, s: ["report", e.incomplete, "--out", s / "report.html"],
        "run is incomplete (recording stopped before the end); finish it with `gateprobe record ... --resume`",
        out=False),
    Bad("--out on a read-only file system (/proc)",
        lambda e, s: _rec(e) + ["--out", f"/proc/gateprobe-test-{os.getpid()}/run"],
        "cannot create the run folder", out=False),
    # ---- issue 16: silent wrong results
    Bad("--quantile NaN", lambda e, s: _rec(e, None, None, "--quantile", "nan"),
        "--quantile must lie strictly between 0 and 1"),
    Bad("--quantile 1.5", lambda e, s: _rec(e, None, None, "--quantile", "1.5"),
        "--quantile must lie strictly between 0 and 1"),
    Bad("--quantile 0", lambda e, s: _rec(e, None, None, "--quantile", "0"),
        "--quantile must lie strictly between 0 and 1"),
    Bad("--samples -1", lambda e, s: _rec(e, None, None, "--samples", "-1"), "--samples must be an integer >= 0"),
    Bad("--n that implies years", lambda e, s: _rec(e, "scenes:32", None, "--n", str(10 ** 10)),
        "images would take about"),
    Bad("--max-hours negative", lambda e, s: _rec(e, None, None, "--max-hours", "-1"),
        "--max-hours must be a number >= 0"),
    Bad("a model whose output has one channel", lambda e, s: _rec(e, None, "gp_evil_models:one_channel"),
        "returned a tensor of shape [2, 1, 32, 32] from its calibration pass, expected [2, 3, 32, 32]"),
    Bad("a model whose output has half the size", lambda e, s: _rec(e, None, "gp_evil_models:half_size"),
        "returned a tensor of shape [2, 3, 16, 16]"),
    Bad("a forward returning a tuple", lambda e, s: _rec(e, None, "gp_evil_models:tuple_output"),
        "returned tuple of 2 from its calibration pass, not a tensor [2, 3, 32, 32]"),
    Bad("a forward returning None", lambda e, s: _rec(e, None, "gp_evil_models:none_output"),
        "returned None from its calibration pass"),
    Bad("a user module calling sys.exit(0) at import", lambda e, s: _rec(e, None, "gp_exits_on_import:build"),
        "while importing 'gp_exits_on_import' called sys.exit(0)", code=1),
    # ---- issue 16: the user's own code raising: one line naming it, exit 1
    Bad("a user module that raises on import", lambda e, s: _rec(e, None, "gp_raises_on_import:build"),
        "--model 'gp_raises_on_import:build': your code raised RuntimeError while importing "
        "'gp_raises_on_import': broken at import", code=1),
    Bad("a factory that raises", lambda e, s: _rec(e, None, "gp_evil_models:failing_factory"),
        "your code raised ValueError in failing_factory(): factory cannot build this", code=1),
    Bad("a forward that raises inside a submodule", lambda e, s: _rec(e, None, "gp_evil_models:raising_forward"),
        "your model raised RuntimeError in module 'broken' (Broken) during the calibration pass: inner layer is "
        "broken", code=1),
    Bad("a forward that calls sys.exit", lambda e, s: _rec(e, None, "gp_evil_models:exiting_forward"),
        "your model raised SystemExit in Exits during the", code=1),
    # ---- issue 16: settings out of range, one line each
    Bad("evaluate --n 0", lambda e, s: ["evaluate", e.pconv, "--n", "0"], "--n must be an integer >= 1", out=False),
    Bad("evaluate --n -5", lambda e, s: ["evaluate", e.pconv, "--n", "-5"], "--n must be an integer >= 1", out=False),
    Bad("layers --size 0", lambda e, s: ["layers", "--model", e.pconv, "--size", "0"],
        "--size must be an integer from 1 to 8192", out=False),
    Bad("serve --port 99999", lambda e, s: ["serve", e.root / "runs", "--port", "99999"],
        "--port must be an integer from 1 to 65535", out=False),
    Bad("serve --port -1", lambda e, s: ["serve", e.root / "runs", "--port", "-1"],
        "--port must be an integer from 1 to 65535", out=False),
    Bad("serve --host with a space", lambda e, s: ["serve", e.root / "runs", "--host", "my host"],
        "--host must be an IP address (127.0.0.1, ::1, 0.0.0.0 for every interface) or a host name", out=False),
    Bad("serve --host 999.1.1.1", lambda e, s: ["serve", e.root / "runs", "--host", "999.1.1.1"],
        "--host must be an IP address", out=False),
    Bad("record --seed -1", lambda e, s: _rec(e, "scenes:32", None, "--seed", "-1"),
        "--seed must be an integer from 0 to 4294967295"),
    Bad("train --seed -1", lambda e, s: ["train", "pconv-scenes", "--out", s / "ckpt", "--seed", "-1"],
        "--seed must be an integer from 0 to 4294967295", out=False),
    Bad("train --batch-size 0", lambda e, s: ["train", "pconv-scenes", "--out", s / "ckpt", "--batch-size", "0"],
        "--batch-size must be an integer >= 1", out=False, absent=("different sizes",)),
    Bad("merge of a manifest with shards: []", lambda e, s: ["merge", _edited_run(e, s, shards=[])],
        "'shards' is [], not a list of the images the run recorded"),
    Bad("merge of a manifest with shards: null", lambda e, s: ["merge", _edited_run(e, s, shards=None)],
        "'shards' is None"),
    # ---- issue 16: unclear messages made clear
    Bad("card without sha256",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _card_without(f, "sha256"))),
        "card.json: no valid 'sha256' of model.safetensors (got None)"),
    Bad("card without config",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _card_without(f, "config"))),
        "card.json: no 'config'"),
    Bad("card with a non-numeric config value",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _card(f, config={"width": "eight",
                                                                                      "image_size": 32}))),
        "config 'width' is 'eight'; expected an integer"),
    Bad("random bytes as a .pth (even with --trust-pickle)",
        lambda e, s: _rec(e, None, "deepfillv2:" + _random_file(s / "generator.pth"), "--trust-pickle"),
        "not a PyTorch checkpoint readable with weights_only=True (random or damaged bytes",
        absent=("weights_only=False", "weights_only` set to `False", "trusted source")),
    Bad("hostile pickle: no advice to set weights_only=False",
        lambda e, s: _rec(e, None, "deepfillv2:" + _pickle_file(s, hostile=True), "--trust-pickle"),
        "holds pickled objects other than tensors", absent=("weights_only=False", "weights_only` set to `False")),
    # ---- issue 29: flags that do what they say, one line for every mistake
    Bad("--holes folder: whose masks are all hole", lambda e, s: _rec(e, None, None, "--holes", _mask_folder(s, 255)),
        "none of the 6 masks has both hole and valid pixels (6 all hole: m0.png, m1.png, m2.png, ...; read as "
        "white >= 0.5 = hole)"),
    Bad("--holes folder: whose masks have no hole", lambda e, s: _rec(e, None, None, "--holes", _mask_folder(s, 0)),
        "none of the 6 masks has both hole and valid pixels (6 without a hole"),
    Bad("--holes folder: of grey masks read at a threshold above them",
        lambda e, s: _rec(e, None, None, "--holes", _mask_folder(s, 100), "--mask-threshold", "0.5"),
        "6 without a hole"),
    Bad("--random-init with an import path (no architecture to draw weights for)",
        lambda e, s: _rec(e, None, "gp_evil_models:nan_output", "--random-init"),
        "--model 'gp_evil_models:nan_output' is neither, so its weights cannot be randomised"),
    Bad("--random-init with a checkpoint whose card names an unknown model",
        lambda e, s: _rec(e, None, _copy_checkpoint(e, s, lambda f: _card(f, model="no-such-model")), "--random-init"),
        "unknown model 'no-such-model'; registered models: gated-scenes, pconv-scenes; the card does not describe"),
    Bad("--init-seed -1", lambda e, s: _rec(e, None, None, "--random-init", "--init-seed", "-1"),
        "--init-seed must be an integer from 0 to 4294967295, not -1"),
    Bad("serve --host that does not resolve", lambda e, s: ["serve", e.root / "runs", "--host", "no.such.host.invalid"],
        "--host 'no.such.host.invalid': no such host", out=False),
    Bad("merge into one of its inputs with --overwrite",
        lambda e, s: ["merge", e.precious, "--out", e.precious, "--overwrite"],
        "is also one of the runs to merge", out=False, absent=("not a run directory",)),
    Bad("merge into one of its inputs through a symbolic link",
        lambda e, s: ["merge", e.precious, "--out", _link(s / "link", e.precious), "--overwrite"],
        "is also one of the runs to merge", out=False),
]


def _mask_folder(scratch: Path, value: int) -> str:
    """``folder:PATH`` of six 32x32 masks of one grey ``value``."""
    folder = scratch / "masks"
    folder.mkdir()
    for k in range(6):
        _image(folder / f"m{k}.png", np.full((SIZE, SIZE), value, np.uint8))
    return f"folder:{folder}"


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def _card_without(folder: Path, key: str) -> None:
    card = json.loads((folder / "card.json").read_text())
    card.pop(key)
    (folder / "card.json").write_text(json.dumps(card))


def _random_file(path: Path) -> str:
    path.write_bytes(np.random.default_rng(5).integers(0, 256, 300, dtype=np.uint8).tobytes())
    return str(path)


def _edited_run(env: Env, scratch: Path, **changes) -> Path:
    """A copy of the complete run with manifest keys changed."""
    run = scratch / "edited"
    shutil.copytree(env.precious, run)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(manifest | changes))
    return run


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.input for c in BAD_INPUTS])
def test_bad_input_gives_one_line_exit_2_and_damages_nothing(case, env, tmp_path, capsys):
    argv = case.argv(env, tmp_path)
    if case.out:
        argv += ["--out", env.precious, "--overwrite"]
    code, stderr = run_cli(argv, capsys)
    line = error_line(stderr)
    assert code == case.code, stderr
    assert line.startswith(f"gateprobe {argv[0]}: error: ") and case.phrase in line, line
    assert not any(phrase in line for phrase in case.absent), line
    assert digest(env.precious) == env.precious_digest  # the complete run is untouched...
    assert not list(env.precious.parent.glob(".*"))  # ...and nothing was left beside it
    load_run(env.precious)
    assert not (tmp_path / "PWNED").exists()


def _masks(value) -> dict:
    return {f"i{k}": np.full((SIZE, SIZE), value, np.uint8) for k in range(6)}


@pytest.mark.parametrize("kind", ["gray", "RGBA", "16-bit", "soft masks", "all hole", "no hole"])
def test_handled_inputs_record(kind, env, tmp_path, capsys):
    """Odd but valid inputs record; statistics that are undefined are NaN, never an error."""
    data = tmp_path / "data"
    extra = []
    if kind == "soft masks":  # grey 100/255 = 0.39: hole only at a threshold below it
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[8:24, 8:24] = 100
        make_folder(data, masks={f"i{k}": mask for k in range(6)})
        extra = ["--mask-threshold", "0.25"]
    elif kind in ("all hole", "no hole"):  # (and a class that no pixel has)
        make_folder(data, masks=_masks(255 if kind == "all hole" else 0), classes=("sky", "grass", "absent", "box"))
    else:
        make_folder(data)
        rng = np.random.default_rng(1)
        for path in (data / "images").glob("*.png"):
            if kind == "gray":
                _image(path, rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8))
            elif kind == "RGBA":
                _image(path, rng.integers(0, 256, (SIZE, SIZE, 4), dtype=np.uint8))
            else:
                _image(path, rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16))
    code, stderr = run_cli(_rec(env, f"folder:{data}", env.gated, *extra) + ["--out", tmp_path / "run"], capsys)
    assert code == 0, stderr
    run = load_run(tmp_path / "run")
    hole = np.asarray(run.sample_input("hole"))
    image = np.asarray(run.sample_input("image"), dtype=np.float32)
    assert np.isfinite(image).all() and 0 <= image.min() and image.max() <= 1
    ch = run.channels
    if kind == "soft masks":
        assert hole[:, 0, 8:24, 8:24].min() == 1 and hole.sum() == 2 * 16 * 16
    elif kind == "all hole":  # no valid pixel: nothing to compare the hole with
        assert hole.min() == 1
        assert ch.auc_hole.isna().all() and ch.mean_valid.isna().all() and ch.p_hole.isna().all()
        assert ch.mean_hole.notna().all()
    elif kind == "no hole":  # no hole pixel: hole statistics undefined
        assert hole.max() == 0
        assert ch.auc_hole.isna().all() and ch.mean_hole.isna().all() and ch.auc_sketch.isna().all()
        assert ch.mean_valid.notna().all()
    if kind in ("all hole", "no hole"):
        absent = run.labels[run.labels.label == "absent"]
        assert len(absent) and (absent.pixels == 0).all() and (absent.iou == 0).all()
        assert absent.auc.isna().all() and absent.mean_in.isna().all() and absent.p_value.isna().all()
    else:
        assert ch["mean"].notna().all()


# ============================================================================ 2. crash safety
class Interrupt:
    """A dataset that raises KeyboardInterrupt when item ``at`` is read (a crash mid-recording)."""

    def __init__(self, data, at: int):
        self.data, self.at, self.classes = data, at, data.classes

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.at:
            raise KeyboardInterrupt
        return self.data[i]

    def spec(self):
        return self.data.spec()


RESUME = dict(n=24, batch_size=4, samples=6, calibration=8, checkpoint_every=2, progress=False)


@pytest.mark.slow  # nine recordings of 24 images: `make test`'s second step
def test_resume_after_interruption_equals_an_uninterrupted_run(env, tmp_path, monkeypatch):
    model = resolve_model(str(env.gated))
    data = parse_data("scenes:32", n=24)
    reference = record(model, data, tmp_path / "reference", **RESUME)

    # stopped in the 5th batch (images 16-19); checkpoints were written after batches 2 and 4
    with pytest.raises(KeyboardInterrupt):
        record(model, Interrupt(data, 18), tmp_path / "run", **RESUME)
    with pytest.raises(RunError, match="incomplete.*--resume"):
        load_run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["position"] == "16"
    resumed = record(model, data, tmp_path / "run", resume=True, **RESUME)
    assert_same_tables(reference, resumed)
    assert digest(reference.path / "samples") == digest(resumed.path / "samples")
    assert not (resumed.path / PROGRESS).exists() and not (resumed.path / "progress.json").exists()

    # stopped while writing the tables, after the last checkpoint (position == the end)
    record_module = sys.modules["probe.rundir.write"]  # where write_run writes its tables
    real, written = record_module.write_table, []

    def failing(path, frame):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real(path, frame)

    monkeypatch.setattr(record_module, "write_table", failing)
    with pytest.raises(KeyboardInterrupt):
        record(model, data, tmp_path / "late", **RESUME)
    monkeypatch.setattr(record_module, "write_table", real)
    with pytest.raises(RunError, match="--resume"):
        load_run(tmp_path / "late")
    assert_same_tables(reference, record(model, data, tmp_path / "late", resume=True, **RESUME))
    # resuming a run that never reached its first checkpoint starts it from the beginning
    with pytest.raises(KeyboardInterrupt):
        record(model, Interrupt(data, 10), tmp_path / "early", **(RESUME | {"checkpoint_every": 3}))
    assert not (tmp_path / "early" / PROGRESS).exists()
    assert_same_tables(reference, record(model, data, tmp_path / "early", resume=True, **RESUME))
    # killed while writing its manifest: only write_atomic's temporary is there; a new or resumed run starts afresh
    for name, resume in (("manifest-new", False), ("manifest-resumed", True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / ".manifest.json.tmp4242").write_text('{"schema": ')
        assert_same_tables(reference, record(model, data, tmp_path / name, resume=resume, **RESUME))
        assert not list((tmp_path / name).rglob(".*.tmp*"))
    (tmp_path / "foreign").mkdir()  # ...but a folder with anything else in it is never taken over
    (tmp_path / "foreign" / ".manifest.json.tmp4242").write_text("")
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a run directory"):
        record(model, data, tmp_path / "foreign", resume=True, **RESUME)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def _cli_child(argv: list[str]) -> None:
    """A forked copy of this process running the CLI (``python -m probe`` without the start-up)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        code = main(argv)
    except BaseException:  # noqa: BLE001
        code = 1
    os._exit(code)


def _check_after_kill(run_dir: Path, context: str) -> bool:
    """What a killed recording may leave: every table readable; a complete run that loads, or an
    incomplete one that load_run refuses (with a usable checkpoint, if any). Returns complete."""
    if not run_dir.exists():
        return False
    for table in run_dir.glob("*.parquet"):
        pd.read_parquet(table)  # never half written
    for array in run_dir.glob("samples/*/*.npy"):
        np.load(array)
    if not (run_dir / "manifest.json").exists():
        return False
    manifest = json.loads((run_dir / "manifest.json").read_text())
    if manifest["complete"]:
        load_run(run_dir)
        return True
    with pytest.raises(RunError, match="--resume"):
        load_run(run_dir)
    read_progress(run_dir, manifest)  # None, or a checkpoint that fits the run
    return False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.slow  # real processes (interpreter start-ups, kills): `make test`'s second step
def test_sigkill_at_random_points_leaves_a_resumable_or_refused_run(env, tmp_path):
    seed = int(os.environ.get("GATEPROBE_KILL_SEED", random.SystemRandom().randrange(10 ** 6)))
    rng = random.Random(seed)
    torch.set_num_threads(1)  # the children and the subprocess compute exactly as this reference
    argv = ["record", "--model", str(env.pconv), "--data", "scenes:32", "--n", "48", "--batch-size", "2",
            "--samples", "4", "--checkpoint-every", "1"]
    start = time.perf_counter()
    reference = record(resolve_model(str(env.pconv)), "scenes:32", tmp_path / "reference", n=48, batch_size=2,
                       samples=4, checkpoint_every=1, progress=False)
    duration = time.perf_counter() - start
    run_dir = tmp_path / "killed"
    context = multiprocessing.get_context("fork")
    complete, kills, restarts = False, [], 0
    while len(kills) < 3 and not complete:
        child = context.Process(target=_cli_child, args=(argv + ["--out", str(run_dir)]
                                                         + (["--resume"] if kills else []),))
        child.start()
        done = 0  # images already recorded: aim the kill within what is left (plus start-up)
        if (run_dir / "progress.json").exists():
            done = int(json.loads((run_dir / "progress.json").read_text())["position"])
        if kills:
            delay = rng.uniform(0.0, duration * max(0.25, 1.1 * (1 - done / 48)))
        else:  # the first kill must land: aim earlier each time a run finished before it
            delay = rng.uniform(0.0, duration * 0.9 * 0.6 ** restarts)
        child.join(delay)
        if child.is_alive():
            os.kill(child.pid, signal.SIGKILL)
            kills.append(round(delay, 3))
        child.join(60)
        assert child.exitcode in (0, -signal.SIGKILL), f"seed {seed}: exit code {child.exitcode}"
        complete = _check_after_kill(run_dir, f"seed {seed}")
        if complete and not kills:  # nothing was killed: start over
            assert restarts < 8, f"seed {seed}: every child finished before its kill"
            shutil.rmtree(run_dir)
            complete, restarts = False, restarts + 1
    if not complete:  # finish in a fresh interpreter: `python -m probe record ... --resume`
        result = subprocess.run([sys.executable, "-m", "probe", *argv, "--out", str(run_dir), "--resume"],
                                cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, f"seed {seed}: {result.stderr[-2000:]}"
    print(f"SIGKILL test: seed {seed}, reference {duration:.2f} s, killed after {kills} s ({restarts} restarts), "
          f"finished by {'a fork' if complete else 'python -m probe record --resume'}")
    assert_same_tables(reference, load_run(run_dir))
    assert digest(reference.path / "samples") == digest(run_dir / "samples"), f"seed {seed}, kills {kills}"
    assert not list(run_dir.rglob(".*.tmp*")) and not (run_dir / PROGRESS).exists()


def _fail_fsync_of(name: str, error: int):
    real = os.fsync

    def fsync(fd):
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(error, os.strerror(error))
        return real(fd)

    return fsync


@pytest.mark.parametrize("overwrite", [False, True], ids=["new --out", "--overwrite of a complete run"])
def test_disk_full_gives_one_line_and_keeps_previous_files(env, tmp_path, capsys, monkeypatch, overwrite):
    target = tmp_path / "run"
    if overwrite:
        shutil.copytree(env.precious, target)
    before = digest(target) if overwrite else None
    monkeypatch.setattr(os, "fsync", _fail_fsync_of("channels.parquet", errno.ENOSPC))
    code, stderr = run_cli(_rec(env) + ["--out", target] + (["--overwrite"] if overwrite else []), capsys)
    monkeypatch.undo()
    line = error_line(stderr)
    assert code == 2 and "No space left on device" in line and "channels.parquet" in line, line
    assert not list(tmp_path.rglob(".*.tmp*"))
    if overwrite:
        assert digest(target) == before and not list(tmp_path.glob(".*"))
    else:
        with pytest.raises(RunError, match="--resume"):
            load_run(target)  # the layers table may be there, but the run is not complete
        for table in target.glob("*.parquet"):
            pd.read_parquet(table)


def test_read_only_output_gives_one_line_and_keeps_previous_files(env, tmp_path, capsys, monkeypatch):
    target = tmp_path / "run"
    shutil.copytree(env.precious, target)
    before = digest(target)
    real = os.replace

    def replace(src, dst):
        if ".tmp" in Path(src).name:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code, stderr = run_cli(_rec(env) + ["--out", target, "--overwrite"], capsys)
    monkeypatch.undo()
    line = error_line(stderr)
    assert code == 2 and "Permission denied" in line and str(target) in line, line
    assert digest(target) == before and not list(tmp_path.rglob(".*tmp*"))


def test_incomplete_runs_are_refused_by_report_and_listed_as_skipped_by_serve(env, tmp_path, capsys, monkeypatch):
    import waitress

    from dashboards.store import RunStore

    store = RunStore(env.root / "runs").refresh()
    assert "precious" in store.runs and "halfway" not in store.runs
    assert "--resume" in store.skipped["halfway"]
    monkeypatch.setattr(waitress, "serve", lambda app, **kwargs: None)
    capsys.readouterr()
    assert main(["serve", str(env.root / "runs")]) == 0
    listing = capsys.readouterr().out
    assert "serving  precious" in listing
    assert "skipped  halfway: run is incomplete" in listing and "--resume" in listing
    code, stderr = run_cli(["report", env.incomplete, "--out", tmp_path / "report.html"], capsys)
    assert code == 2 and "--resume" in error_line(stderr) and not (tmp_path / "report.html").exists()


# ============================================================================ 3. the explorer
class EvilNet(nn.Module):
    """One gated layer whose module name is an HTML payload."""

    accepts_sketch = False

    def __init__(self):
        super().__init__()
        self.add_module(EVIL_LAYER, GatedConv2d(4, 4, 3))
        self.to_rgb = nn.Conv2d(4, 3, 1)
        with torch.no_grad():
            getattr(self, EVIL_LAYER).gate.weight.mul_(8)

    def forward(self, image, hole, sketch=None):
        return self.to_rgb(getattr(self, EVIL_LAYER)(torch.cat([image * (1 - hole), hole], 1)))


@pytest.fixture(scope="module")
def served(env):
    """A runs folder holding one run whose run, layer and class names are payloads, and a run
    outside it whose names (TOPSECRET) must never be shown."""
    runs = env.root / "served"
    data = make_folder(env.root / "evil-data", n=4, classes=("sky", EVIL_CLASS, "box"))
    torch.manual_seed(0)
    record(EvilNet(), FolderDataset(data), runs / EVIL_RUN, batch_size=2, samples=2, progress=False)
    outside = env.root / "outside"
    shutil.copytree(runs / EVIL_RUN, outside)
    manifest = json.loads((outside / "manifest.json").read_text())
    manifest["data"]["classes"] = ["TOPSECRET-0", "TOPSECRET-1", "TOPSECRET-2"]
    manifest["model"]["name"] = "TOPSECRET-model"
    (outside / "manifest.json").write_text(json.dumps(manifest))
    return runs


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _displayed(figure: dict) -> dict:
    """A figure without the parts plotly never renders as text: ``layout.meta`` and the traces'
    ``customdata`` hold the raw names as keys for click-through (what a hover shows of them is
    checked to be escaped through the hovertemplate's own strings and ``text``)."""
    layout = {k: v for k, v in (figure.get("layout") or {}).items() if k != "meta"}
    data = [{k: v for k, v in trace.items() if k != "customdata"} for trace in figure.get("data") or []]
    return {"data": data, "layout": layout, "frames": figure.get("frames")}


def _check_component_tree(tree) -> None:
    """Plotly figures may show names only escaped; no component may render raw HTML."""
    if isinstance(tree, dict):
        if "dangerously_allow_html" in tree:
            assert not tree["dangerously_allow_html"]
        if tree.get("type") == "Markdown":
            assert not any(e in s for s in _strings(tree) for e in EVIL)
        for key, value in tree.items():
            if key == "figure" and isinstance(value, dict):
                raw = [s for s in _strings(_displayed(value)) for e in EVIL if e in s]
                assert not raw, raw[:3]
            else:
                _check_component_tree(value)
    elif isinstance(tree, list):
        for item in tree:
            _check_component_tree(item)


def _to_json(component):
    import plotly.io as pio

    return json.loads(pio.to_json(component, validate=False))


@pytest.fixture(scope="module")
def app(served):
    from dashboards.app import create_app

    return create_app(served)


def _callbacks_for(app, layout_json) -> list[dict]:
    """Requests that the browser would send for the callbacks of a rendered page (string ids only),
    with the components' initial values."""
    from dash._utils import split_callback_id

    values = {}

    def walk(node):
        if isinstance(node, dict):
            props = node.get("props", {})
            if isinstance(props, dict) and isinstance(props.get("id"), str):
                values[props["id"]] = props
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(layout_json)
    requests = []
    for key, callback in app.callback_map.items():
        deps = callback["inputs"] + callback.get("state", [])
        if "@" in key or "{" in key or any(not isinstance(d["id"], str) or d["id"].startswith("{") for d in deps):
            continue
        if not all(d["id"] in values for d in deps):
            continue

        def item(d):
            return {"id": d["id"], "property": d["property"], "value": values[d["id"]].get(d["property"])}

        requests.append({"output": key, "outputs": split_callback_id(key),
                         "inputs": [item(d) for d in callback["inputs"]],
                         "state": [item(d) for d in callback.get("state", [])],
                         "changedPropIds": [f"{d['id']}.{d['property']}" for d in callback["inputs"][:1]]})
    return requests


def test_explorer_binds_localhost_without_debug(served, monkeypatch, capsys):
    import waitress

    calls = []
    monkeypatch.setattr(waitress, "serve", lambda app, **kwargs: calls.append(dict(kwargs, debug=app.debug)))
    assert main(["serve", str(served)]) == 0
    assert [{k: c[k] for k in ("host", "port", "debug")} for c in calls] == [
        {"host": "127.0.0.1", "port": 8050, "debug": False}]
    out = capsys.readouterr()
    assert "warning" not in out.err
    assert main(["serve", str(served), "--host", "0.0.0.0"]) == 0  # only when asked, with a warning
    assert calls[-1]["host"] == "0.0.0.0" and calls[-1]["debug"] is False
    assert "anyone who can reach this address" in capsys.readouterr().err
    from probe.cli import build_parser

    assert build_parser().parse_args(["demo"]).host == "127.0.0.1"


TRAVERSAL = ["../outside", "../../outside", "/etc/passwd", "../../../../etc/passwd", "..", ".", "%2e%2e/outside",
             "..\\outside", "outside", "\x00", "a" * 5000]
PARAMS = ("run", "a", "b", "layer", "sample", "channel", "label", "sort", "order", "scale", "base", "kind", "stat",
          "metric", "layers", "x", "y")


def _assert_no_leak(text: str) -> None:
    assert "TOPSECRET" not in text and "root:x:0" not in text and "Traceback" not in text


def test_url_parameters_cannot_reach_outside_the_runs_folder(served, app, env):
    from dashboards.app import PAGES
    from dashboards.pages.common import Context
    from dashboards.store import RunStore

    store = RunStore(served).refresh()
    assert list(store.runs) == [EVIL_RUN]
    for value in TRAVERSAL:
        assert store.get(value) is None
    context = Context(store=store, root=store.root)
    for page in PAGES:
        for value in TRAVERSAL:
            layout = page.layout(store, {key: value for key in PARAMS}, context)
            _assert_no_leak(json.dumps(_to_json(layout)))
    client = app.server.test_client()
    for path in ("/../outside/manifest.json", "/assets/../../outside/manifest.json",
                 "/_dash-component-suites/../../outside/manifest.json", "/assets/%2e%2e/%2e%2e/outside/manifest.json",
                 "/_dash-component-suites/dash/../../../../../etc/passwd", "/assets/../../../../etc/passwd"):
        response = client.get(path)
        _assert_no_leak(response.get_data(as_text=True))
    for value in TRAVERSAL[:6]:  # the router callback, as the browser calls it for /layer?run=...&layer=...
        search = "?" + "&".join(f"{k}={value}" for k in PARAMS)
        response = client.post("/_dash-update-component", json={
            "output": "..app-page.children...app-nav.children..",
            "outputs": [{"id": "app-page", "property": "children"}, {"id": "app-nav", "property": "children"}],
            "inputs": [{"id": "url", "property": "pathname", "value": "/layer"},
                       {"id": "url", "property": "search", "value": search}],
            "state": [{"id": "app-last", "property": "data", "value": None}],
            "changedPropIds": ["url.search"]})
        assert response.status_code == 200
        _assert_no_leak(response.get_data(as_text=True))


def test_names_are_escaped_in_figures_and_the_report(served, app, env, tmp_path, capsys):
    from dashboards.app import PAGES
    from dashboards.pages.common import Context
    from dashboards.store import RunStore

    run = load_run(served / EVIL_RUN)
    assert run.classes[1] == EVIL_CLASS and list(run.layers.layer) == [EVIL_LAYER]
    store = RunStore(served).refresh()
    context = Context(store=store, root=store.root)
    client = app.server.test_client()
    fired, shown = 0, set()
    for page in PAGES:
        params = {"run": EVIL_RUN, "a": EVIL_RUN, "b": EVIL_RUN, "layer": EVIL_LAYER, "label": EVIL_CLASS}
        layout = _to_json(page.layout(store, params, context))
        _check_component_tree(layout)
        for request in _callbacks_for(app, layout):
            response = client.post("/_dash-update-component", json=request)
            assert response.status_code in (200, 204), (page.PATH, request["output"], response.status_code)
            if response.status_code == 200:
                _check_component_tree(response.get_json())
                fired += 1
                shown.update(s for s in _strings(response.get_json()) for e in EVIL if html_escape(e) in s)
    assert fired >= len(PAGES)  # the figures were really drawn...
    assert {e for e in EVIL if any(html_escape(e) in s for s in shown)} == set(EVIL)  # ...with every name, escaped

    code, stderr = run_cli(["report", served / EVIL_RUN, "--out", tmp_path / "report.html"], capsys)
    assert code == 0, stderr
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    for evil in EVIL:
        assert evil not in html and evil not in md, evil
    assert "&lt;img src=x onerror=alert(1)&gt;" in html or "\\u0026lt;img" in html


def test_requests_are_bounded_and_malformed_ones_get_no_trace(app):
    client = app.server.test_client()
    for body in (b"garbage", b"{", b"[]", b'{"output": 1}', b'{"output": "nope.children", "inputs": []}',
                 json.dumps({"output": "..app-page.children...app-nav.children..", "inputs": "x"}).encode()):
        response = client.post("/_dash-update-component", data=body, content_type="application/json")
        assert response.status_code >= 400, body
        text = response.get_data(as_text=True)
        assert "Traceback" not in text and 'File "' not in text and "site-packages" not in text, text[:300]
    big = b'{"output": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    assert client.post("/_dash-update-component", data=big, content_type="application/json").status_code == 413


def test_drawn_shapes_are_bounded():
    from dashboards.pages.live import MAX_PATH_CHARS, apply_relayout, rasterise

    many = [{"type": "rect", "x0": i % 30, "x1": i % 30 + 1, "y0": 0, "y1": 1} for i in range(100_000)]
    start = time.perf_counter()
    shapes, changed = apply_relayout([], {"shapes": many}, max_shapes=40)
    assert changed and len(shapes) == 40
    long_path = "M " + " L ".join(f"{i % 32} {i % 31}" for i in range(200_000))
    assert len(long_path) > MAX_PATH_CHARS
    shapes, _ = apply_relayout([], {"shapes": [{"type": "path", "path": long_path}]}, max_shapes=40)
    assert shapes == []  # an over-long path is dropped
    hole, sketch, counts = rasterise(many, (SIZE, SIZE), max_shapes=40)
    assert counts["hole shapes"] == 40 and counts["ignored"] == len(many) - 40
    assert time.perf_counter() - start < 10


# ============================================================================ 4. issue 16: data loss, code from a run
def _web_project(folder: Path) -> dict:
    """A folder that merely holds a manifest.json (a web app's), with files of its own."""
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": "my web app", "icons": [], "start_url": "/"}))
    (folder / "index.html").write_text("<h1>mine</h1>")
    (folder / "src").mkdir()
    (folder / "src" / "app.js").write_text("console.log(1)")
    return digest(folder)


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "--overwrite"])
def test_a_foreign_manifest_json_is_not_a_gateprobe_run_and_stays_untouched(env, tmp_path, capsys, overwrite):
    """With or without --overwrite the folder is called what it is (issue 29: without it, it used to
    be "an incomplete one: pass --resume")."""
    target = tmp_path / "site"
    before = _web_project(target)
    code, stderr = run_cli(_rec(env) + ["--out", target, *overwrite], capsys)
    line = error_line(stderr)
    assert code == 2 and "is not a gateprobe run (its manifest.json has no schema_version" in line, line
    assert "left it untouched" in line and "--resume" not in line, line
    assert digest(target) == before and not list(tmp_path.glob(".*"))


def test_overwrite_refuses_a_run_folder_holding_other_files(env, tmp_path, capsys):
    target = tmp_path / "run"
    shutil.copytree(env.precious, target)
    (target / "notes.txt").write_text("my notes")
    before = digest(target)
    code, stderr = run_cli(_rec(env) + ["--out", target, "--overwrite"], capsys)
    line = error_line(stderr)
    assert code == 2 and "files that are not part of a run: notes.txt" in line, line
    assert digest(target) == before
    (target / "notes.txt").unlink()  # a gateprobe run and its own files only: replaced
    code, stderr = run_cli(_rec(env) + ["--out", target, "--overwrite"], capsys)
    assert code == 0, stderr
    load_run(target)


def _interrupted_overwrite(env: Env, tmp_path: Path) -> tuple[Path, Path]:
    """What a SIGKILL during `record --out RUN --overwrite` leaves: the previous (complete) run in
    .RUN.replaced and the new, incomplete one in RUN."""
    target, aside = tmp_path / "run", tmp_path / ".run.replaced"
    shutil.copytree(env.precious, aside)
    shutil.copytree(env.incomplete, target)
    return target, aside


def test_a_failing_overwrite_after_an_interrupted_one_keeps_the_only_complete_copy(env, tmp_path, capsys):
    target, aside = _interrupted_overwrite(env, tmp_path)
    bad = _copy_data(env, tmp_path, lambda f: _truncate(f / "images" / "i3.png"))
    code, stderr = run_cli(_rec(env, bad) + ["--out", target, "--overwrite"], capsys)
    assert code == 2 and "not a readable image" in error_line(stderr)
    # the complete run is back where the user expects it (or, failing that, still aside)
    assert digest(target) == env.precious_digest and not aside.exists()
    load_run(target)


def test_a_successful_overwrite_after_an_interrupted_one_replaces_the_run(env, tmp_path, capsys):
    target, aside = _interrupted_overwrite(env, tmp_path)
    code, stderr = run_cli(_rec(env, None, None, "--samples", "1") + ["--out", target, "--overwrite"], capsys)
    assert code == 0, stderr
    assert load_run(target).manifest["samples"] == 1 and not aside.exists()


def test_overwrite_refuses_when_both_the_run_and_its_aside_are_complete(env, tmp_path, capsys):
    target, aside = tmp_path / "run", tmp_path / ".run.replaced"
    shutil.copytree(env.precious, target)
    shutil.copytree(env.precious, aside)
    code, stderr = run_cli(_rec(env) + ["--out", target, "--overwrite"], capsys)
    line = error_line(stderr)
    assert code == 2 and str(aside) in line and "both hold complete runs" in line, line
    assert digest(target) == env.precious_digest and digest(aside) == env.precious_digest


class _Forked:
    """A forked child, with the part of :class:`subprocess.Popen` the lock tests use."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self):
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self):
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode


def _hold_lock(target: Path, ready: Path):
    """Another process holding the write lock of ``target`` (as a recording would): a forked copy of
    this one where fork exists (no interpreter start-up), else a ``python -c`` subprocess."""
    if hasattr(os, "fork"):
        from probe.rundir.folder import run_lock

        pid = os.fork()
        if pid == 0:  # the child: take the lock, say so, hold it until killed
            try:
                with run_lock(target):
                    ready.write_text("held")
                    time.sleep(60)
            finally:
                os._exit(0)
        holder = _Forked(pid)
    else:
        code = ("import sys, time, pathlib; from probe.rundir.folder import run_lock\n"
                "with run_lock(sys.argv[1]):\n"
                "    pathlib.Path(sys.argv[2]).write_text('held')\n"
                "    time.sleep(60)\n")
        holder = subprocess.Popen([sys.executable, "-c", code, str(target), str(ready)], cwd=ROOT)
    deadline = time.time() + 60
    while not ready.exists():
        assert holder.poll() is None and time.time() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return holder


def test_a_second_writer_gets_one_line_naming_the_holders_pid(env, tmp_path, capsys):
    target = tmp_path / "run"
    shutil.copytree(env.precious, target)
    holder = _hold_lock(target, tmp_path / "ready")
    try:
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, stderr = run_cli(_rec(env) + ["--out", target, *extra], capsys)
            line = error_line(stderr)
            assert code == 2 and f"being written by another gateprobe process (pid {holder.pid})" in line, line
            assert digest(target) == env.precious_digest
        code, stderr = run_cli(["merge", env.precious, "--out", target, "--overwrite"], capsys)
        assert code == 2 and f"pid {holder.pid}" in error_line(stderr)
    finally:
        holder.kill()
        holder.wait()
    code, stderr = run_cli(_rec(env) + ["--out", target, "--overwrite"], capsys)  # the lock died with its holder
    assert code == 0, stderr
    assert not list(tmp_path.glob(".run.*"))


@pytest.mark.parametrize("held", ["folder", "link"])
def test_a_symbolic_link_to_the_run_folder_takes_the_same_lock(env, tmp_path, capsys, held):
    """The lock is named after the resolved folder: a writer through a link to it (or to the
    folder, when the link is locked) is the second writer of the same run."""
    target = tmp_path / "run"
    shutil.copytree(env.precious, target)
    link = _link(tmp_path / "alias", target)
    holder = _hold_lock(target if held == "folder" else link, tmp_path / "ready")
    try:
        for extra in ([], ["--overwrite"], ["--resume"]):
            code, stderr = run_cli(_rec(env) + ["--out", link if held == "folder" else target, *extra], capsys)
            line = error_line(stderr)
            assert code == 2 and f"being written by another gateprobe process (pid {holder.pid})" in line, line
            assert digest(target) == env.precious_digest and link.resolve() == target
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("extra", [[], ["--resume"], ["--overwrite"]], ids=["plain", "--resume", "--overwrite"])
def test_an_out_that_is_a_dangling_symbolic_link_is_refused_in_one_line(env, tmp_path, capsys, extra):
    link = _link(tmp_path / "run", tmp_path / "nowhere" / "run")
    code, stderr = run_cli(_rec(env) + ["--out", link, *extra], capsys)
    line = error_line(stderr)
    assert code == 2 and f"--out {link} is a symbolic link to {tmp_path / 'nowhere' / 'run'}, which does not exist" \
        in line, line
    assert "Errno" not in line
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing created


@pytest.mark.parametrize("left", ["incomplete run", "no run"])
def test_reading_after_a_killed_overwrite_says_where_the_previous_run_is_kept(env, tmp_path, capsys, left):
    """A SIGKILL during --overwrite leaves the previous run in .RUN.replaced and in RUN an
    incomplete run (or nothing, when it came between the rename and the new manifest): reading RUN
    says so and how to get the previous run back."""
    target, aside = _interrupted_overwrite(env, tmp_path)
    if left == "no run":
        shutil.rmtree(target)
        target.mkdir()
    before = digest(tmp_path)
    code, stderr = run_cli(["report", target, "--out", tmp_path / "out" / "report.html"], capsys)
    line = error_line(stderr)
    assert code == 2, stderr
    assert ("run is incomplete" if left == "incomplete run" else "not a run directory (no manifest.json)") in line
    assert (f"an interrupted --overwrite kept the run it was replacing in {aside}: to get it back, remove {target} "
            f"and rename {aside} to {target}") in line, line
    with pytest.raises(RunError, match="kept the run it was replacing"):
        load_run(target)
    assert digest(tmp_path) == before and digest(aside) == env.precious_digest and not (tmp_path / "out").exists()


def test_random_init_of_a_checkpoint_folder_draws_new_weights_for_its_architecture(env, tmp_path, capsys):
    """--random-init with a checkpoint folder used to record the trained weights (issue 29): now the
    card's architecture and config with weights drawn from --init-seed, which analyze draws again."""
    from probe.models.checkpoints import read_card
    from probe.recording.manifest import weights_sha256

    trained = weights_sha256(resolve_model(str(env.gated)))
    hashes = {}
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        code, stderr = run_cli(_rec(env, None, env.gated, "--random-init", "--init-seed", seed) + ["--out", out],
                               capsys)
        assert code == 0, stderr
        assert (f"note: --random-init: gated-scenes {read_card(env.gated)['config']} with random weights (seed {seed}) "
                f"of the architecture in {env.gated}; its trained weights are not used") in stderr
        model = load_run(out).manifest["model"]
        assert model["source"] == "random-init" and model["name"] == "gated-scenes" and model["seed"] == seed
        assert model["config"] == read_card(env.gated)["config"] and model["architecture_from"] == str(env.gated)
        hashes[seed] = model["weights_sha256"]
    assert trained not in hashes.values() and hashes[0] != hashes[1]
    again = resolve_model(str(env.gated), random_init=True, init_seed=1)
    assert weights_sha256(again) == hashes[1]  # the seed determines the weights
    code, stderr = run_cli(["analyze", tmp_path / "seed1", "--n", "2", "--no-ablation", "--no-attribution",
                            "--no-sketch"], capsys)
    assert code == 0, stderr  # drawn again from the manifest and checked against the recorded hash


def test_hole_masks_with_one_that_informs_record(env, tmp_path, capsys):
    """Only a mask folder in which *no* mask has both hole and valid pixels is refused."""
    masks = _mask_folder(tmp_path, 255)
    informative = np.zeros((SIZE, SIZE), np.uint8)
    informative[8:20, 8:20] = 255
    _image(tmp_path / "masks" / "m5.png", informative)
    code, stderr = run_cli(_rec(env, None, env.gated, "--holes", masks) + ["--out", tmp_path / "run"], capsys)
    assert code == 0, stderr
    assert load_run(tmp_path / "run").channels.auc_hole.notna().all()


@pytest.mark.slow  # real processes (interpreter start-ups, kills): `make test`'s second step
def test_two_concurrent_record_processes_one_writes_the_other_is_refused(env, tmp_path, capsys):
    """Two real `record` processes on one --out: exactly one writes, the other gets one line."""
    target = tmp_path / "run"
    argv = [sys.executable, "-m", "probe", "record", "--model", "gp_evil_models:slow", "--data", f"folder:{env.data}",
            "--batch-size", "2", "--samples", "2", "--out", str(target)]
    environ = dict(os.environ, OMP_NUM_THREADS="1",
                   PYTHONPATH=os.pathsep.join([str(env.root / "modules"), os.environ.get("PYTHONPATH", "")]))
    first = subprocess.Popen(argv, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / ".run.lock").exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    second = subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=300)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0 and out.count("wrote") == 1, err
    assert second.returncode == 2 and "wrote" not in second.stdout
    line = error_line(second.stderr)
    assert f"pid {first.pid}" in line or "already holds a run" in line, line
    load_run(target)


def _gated_run(env: Env, tmp_path: Path, source: str) -> Path:
    run = tmp_path / "gated"
    record(resolve_model(str(env.gated)), f"folder:{env.data}", run, batch_size=2, samples=2, progress=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["model"]["source"] = source
    (run / "manifest.json").write_text(json.dumps(manifest))
    return run


def test_analyze_imports_no_code_named_by_a_run_folder(env, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "PWNED"
    monkeypatch.setenv("GP_MARKER", str(marker))
    run = _gated_run(env, tmp_path, "gp_marker:build")
    before = digest(run)
    fast = ["--n", "2", "--no-ablation", "--no-attribution", "--no-sketch"]
    code, stderr = run_cli(["analyze", run, *fast], capsys)
    line = error_line(stderr)
    assert code == 2 and "--allow-import-models" in line and "gp_marker:build" in line, line
    assert not marker.exists() and digest(run) == before
    manifest = json.loads((run / "manifest.json").read_text())  # a manifest cannot grant --trust-pickle either
    manifest["model"] |= {"source": "deepfillv2:" + _pickle_file(tmp_path, hostile=False), "trust_pickle": True}
    (run / "manifest.json").write_text(json.dumps(manifest))
    code, stderr = run_cli(["analyze", run, *fast], capsys)
    assert code == 2 and "--trust-pickle given on this command line" in error_line(stderr)
    # the model given again on the command line: used, after checking it has the recorded weights
    code, stderr = run_cli(["analyze", run, "--model", env.pconv, *fast], capsys)
    assert code == 2 and "other weights than the recorded one" in error_line(stderr)
    code, stderr = run_cli(["analyze", run, "--model", env.gated, *fast], capsys)
    assert code == 0, stderr
    assert "embedding" in load_run(run).manifest["analyses"] and not marker.exists()


def test_analyze_rebuilds_a_checkpoint_folder_model_without_opt_in(env, tmp_path, capsys):
    run = _gated_run(env, tmp_path, str(env.gated))
    code, stderr = run_cli(["analyze", run, "--n", "2", "--no-ablation", "--no-attribution", "--no-sketch"], capsys)
    assert code == 0, stderr


def _shard_runs(env: Env, tmp_path: Path, shards: list[int], count: int = 4) -> list[Path]:
    model = resolve_model(str(env.pconv))
    return [record(model, "scenes:32", tmp_path / f"shard{i}", n=8, shard=(i, count), batch_size=2, samples=2,
                   progress=False).path for i in shards]


def test_merge_of_missing_shards_is_refused_or_marked_partial(env, tmp_path, capsys):
    paths = _shard_runs(env, tmp_path, [0, 2])
    code, stderr = run_cli(["merge", *paths, "--out", tmp_path / "merged"], capsys)
    line = error_line(stderr)
    assert code == 2 and "shards 1/4, 3/4 (images [2, 4), [6, 8) of 8) missing" in line, line
    assert "--allow-partial" in line and not (tmp_path / "merged").exists()
    code, stderr = run_cli(["merge", *paths, "--out", tmp_path / "merged", "--allow-partial"], capsys)
    assert code == 0 and "partial run: shards 1/4, 3/4" in stderr, stderr
    merged = load_run(tmp_path / "merged")
    assert merged.manifest["n_images"] == 4 and merged.manifest["partial"]["missing"] == [[2, 4], [6, 8]]
    # the missing shards merged in later: a whole run, no longer marked partial
    paths += _shard_runs(env, tmp_path, [1, 3])
    code, stderr = run_cli(["merge", *paths, "--out", tmp_path / "whole"], capsys)
    assert code == 0, stderr
    assert "partial" not in load_run(tmp_path / "whole").manifest


def test_memory_estimate_refuses_what_cannot_fit(monkeypatch):
    from probe.adapters import find_sites
    from probe.errors import SettingsError
    from probe.recording import budget
    from probe.rundir.settings import RecordSettings

    sites = find_sites(create_model("gated-scenes", width=8, image_size=SIZE))
    settings = RecordSettings(batch_size=2)
    need = budget.check_memory(sites, 3, settings, (SIZE, SIZE))
    assert 0 < need < 64 * 2 ** 20
    monkeypatch.setattr(budget, "available_memory", lambda: need)  # fits only with 20% to spare
    with pytest.raises(SettingsError, match="more than the .* available"):
        budget.check_memory(sites, 3, settings, (SIZE, SIZE))
    with pytest.raises(SettingsError, match="100000 classes .* GiB of memory for the label statistics"):
        budget.check_memory(find_sites(create_model("gated-scenes", image_size=SIZE)), 100_000, settings, (SIZE, SIZE))


def test_record_prints_its_time_estimate(env, tmp_path, capsys):
    code, stderr = run_cli(_rec(env) + ["--out", tmp_path / "run"], capsys)
    assert code == 0 and "estimate: recording 6 images takes about" in stderr, stderr


# ============================================================================ 5. issue 16: the explorer
@pytest.mark.parametrize("host, allowed", [
    ("localhost", True), ("localhost:8050", True), ("127.0.0.1:8050", True), ("127.1.2.3", True), ("[::1]:8050", True),
    ("LOCALHOST.", True), ("evil.example", False), ("evil.example:8050", False), ("localhost.evil.example", False),
    ("127.0.0.1.evil.example", False), ("192.168.1.5:8050", False), ("[::2]:8050", False), ("", False),
    ("localhost:80:80", False), ("localhost:x", False)])
def test_loopback_explorer_rejects_foreign_host_headers(app, host, allowed):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    client = app.server.test_client()
    response = client.get("/", headers={"Host": host})
    assert (response.status_code == 200) is allowed, (host, response.status_code)
    if not allowed:
        assert response.status_code == 403 and "Traceback" not in response.get_data(as_text=True)
        post = client.post("/_dash-update-component", json={}, headers={"Host": host})
        assert post.status_code == 403


def test_explorer_bound_beyond_loopback_answers_any_host(served):
    from dashboards.app import create_app

    client = create_app(served, loopback_only=False).server.test_client()
    assert client.get("/", headers={"Host": "gateprobe.lab.example"}).status_code == 200


def test_serve_uses_waitress_with_the_host_check(served, monkeypatch, capsys):
    import waitress

    calls = []
    monkeypatch.setattr(waitress, "serve", lambda app, **kw: calls.append((app, kw)))
    assert main(["serve", str(served), "--port", "8123"]) == 0
    (wsgi, kw), = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == 8123 and not wsgi.debug
    assert wsgi.test_client().get("/", headers={"Host": "evil.example"}).status_code == 403
    assert main(["serve", str(served), "--host", "0.0.0.0"]) == 0
    assert calls[-1][1]["host"] == "0.0.0.0"
    assert calls[-1][0].test_client().get("/", headers={"Host": "10.0.0.7:8050"}).status_code == 200
