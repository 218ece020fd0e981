"""Devices and precisions on a CPU-only machine: a tensor made on the wrong device is caught by
recording with ``torch.set_default_device("meta")`` active (every factory call without an
explicit device then makes a meta tensor, and the first operation mixing it with a CPU tensor
fails); the numbers equal a plain run's."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

import probe
from probe.data import Scenes
from probe.devices import resolve_device
from probe.rundir.settings import identity_differences


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def models():
    torch.manual_seed(0)
    return {"gated": probe.create_model("gated-scenes", width=8, image_size=32),
            "pconv": probe.create_model("pconv-scenes", width=8, image_size=32)}


def assert_same_tables(a: probe.Run, b: probe.Run) -> None:
    for name in ("layers", "channels", "labels", "evolution"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_exact=False, rtol=1e-12)


@pytest.mark.parametrize("kind", ["gated", "pconv"])
def test_recording_makes_no_tensor_on_the_default_device(kind, tmp_path, request):
    model = models()[kind]
    data = Scenes(size=32, n=8)
    plain = probe.record(model, data, tmp_path / "plain", batch_size=4, samples=2, progress=False)
    request.getfixturevalue("meta_default")
    with_meta = probe.record(model, data, tmp_path / "meta", batch_size=4, samples=2, progress=False,
                             device="cpu")
    torch.set_default_device(None)
    assert_same_tables(plain, with_meta)
    assert with_meta.manifest["device"] == {"type": "cpu", "name": "cpu"}


def test_bfloat16_autocast_records_the_same_statistics_closely(tmp_path):
    model = models()["gated"]
    data = Scenes(size=32, n=16)
    full = probe.record(model, data, tmp_path / "f32", batch_size=8, progress=False)
    half = probe.record(model, data, tmp_path / "bf16", batch_size=8, progress=False, dtype="bfloat16")
    assert half.manifest["settings"]["dtype"] == "bfloat16"
    assert identity_differences(full.manifest, half.manifest) == ["settings"]  # never merged together
    # the same pixels are counted; a gate in (0, 1) computed in bfloat16 (8 mantissa bits) is within
    # 2**-8 of the float32 one, so channel means stay within 0.004 (AUCs move more: ties, see README)
    assert (full.labels.pixels == half.labels.pixels).all()
    assert (full.channels["mean"] - half.channels["mean"]).abs().max() <= 0.004


def test_device_choice_is_checked():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(probe.SettingsError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(probe.SettingsError, match="no CUDA device"):
            resolve_device("cuda:0")
    with pytest.raises(probe.SettingsError, match="--dtype"):
        probe.RecordSettings(dtype="int8")


def test_runs_of_different_devices_are_one_recording():
    a = {"model": {"name": "m"}, "schema_version": 2, "data": {}, "settings": {}, "layers": [], "device": {"type": "cpu"}}
    b = dict(a, device={"type": "cuda", "name": "cuda:0"})
    assert identity_differences(a, b) == []
