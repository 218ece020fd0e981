"""Checkpoints (safetensors + card), the training loop, evaluation metrics and the CLI."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from probe.cli import main
from probe.data import collate, heldout_items
from probe.errors import CheckpointError
from probe.models import create_model
from probe.models.checkpoints import CARD, WEIGHTS, load_model, read_card, save_checkpoint
from probe.rundir.files import sha256_file
from probe.training.evaluate import composite, format_table, image_metrics, metrics_table
from probe.training.train import (LOSS_COLUMNS, LOSS_FILE, OPTIMIZER_FILE, finalize, inpainting_losses, learning_rate,
                                  train)

TINY = dict(size=32, width=8, batch_size=4, eval_items=0, threads=1, checkpoint_every=1000)


def read_losses(folder) -> list[dict]:
    with open(folder / LOSS_FILE, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == LOSS_COLUMNS
    return [dict(zip(rows[0], map(float, r))) for r in rows[1:]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both reference models trained for 100 steps of batch 4 at 32x32, width 8."""
    root = tmp_path_factory.mktemp("trained")
    return {name: (root / name, train(name, root / name, steps=100, **TINY))
            for name in ("pconv-scenes", "gated-scenes")}


@pytest.fixture
def items():
    return heldout_items(2, size=32)


# ----------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", ["gated-scenes", "pconv-scenes"])
def test_save_load_round_trip(tmp_path, name, items):
    torch.manual_seed(1)
    model = create_model(name, width=8, image_size=32)
    card = save_checkpoint(model, tmp_path / "ck", data={"kind": "scenes"}, notes="hello")
    assert card["model"] == name and card["config"] == {"width": 8, "image_size": 32}
    assert card["sha256"] == sha256_file(tmp_path / "ck" / WEIGHTS)
    assert card["parameters"] == sum(p.numel() for p in model.parameters())
    assert read_card(tmp_path / "ck") == json.loads((tmp_path / "ck" / CARD).read_text()) == card
    loaded = load_model(tmp_path / "ck")
    assert not loaded.training and loaded.card["data"] == {"kind": "scenes"} and loaded.card["notes"] == "hello"
    assert loaded.config == model.config and loaded.registry_name == name
    batch = collate(items)
    with torch.no_grad():
        assert torch.equal(model.eval()(batch["image"], batch["hole"]), loaded(batch["image"], batch["hole"]))
    assert not list(tmp_path.glob("ck/.*tmp*"))  # atomic writes leave no temporary files


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(create_model("gated-scenes", width=4, image_size=32), tmp_path / "ck")
    return tmp_path / "ck"


def _rewrite_card(folder, **changes):
    card = json.loads((folder / CARD).read_text())
    card.update(changes)
    (folder / CARD).write_text(json.dumps(card))


def test_hash_mismatch(checkpoint):
    blob = bytearray((checkpoint / WEIGHTS).read_bytes())
    blob[-3] ^= 0xFF  # flip a byte inside the last tensor
    (checkpoint / WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256 does not match card.json"):
        load_model(checkpoint)
    load_model(checkpoint, verify=False)  # still readable when the change is deliberate


def test_truncated_weights(checkpoint):
    blob = (checkpoint / WEIGHTS).read_bytes()
    (checkpoint / WEIGHTS).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(checkpoint)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(checkpoint, verify=False)
    _rewrite_card(checkpoint, sha256=sha256_file(checkpoint / WEIGHTS))  # even with a matching hash
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(checkpoint)


def test_weights_of_another_architecture(checkpoint):
    _rewrite_card(checkpoint, model="pconv-scenes")  # gated weights, card says pconv
    with pytest.raises(CheckpointError) as info:
        load_model(checkpoint)
    message = str(info.value)
    assert "weights do not fit pconv-scenes" in message
    assert "dec_1.bias" in message and "bottleneck.0.feature.bias" in message  # missing and unexpected keys


def test_weights_of_another_width(checkpoint):
    _rewrite_card(checkpoint, config={"width": 8, "image_size": 32})
    with pytest.raises(CheckpointError, match="weights do not fit gated-scenes.*size mismatch"):
        load_model(checkpoint)


def test_non_finite_weights(tmp_path):
    model = create_model("pconv-scenes", width=4, image_size=32)
    with torch.no_grad():
        model.enc_2.weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(model, tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"non-finite.*enc_2\.weight"):
        load_model(tmp_path / "ck")


def test_card_errors(checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="no card.json"):
        load_model(tmp_path / "nowhere")
    (checkpoint / CARD).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(checkpoint)
    (checkpoint / CARD).write_text(json.dumps({"format": "something/else"}))
    with pytest.raises(CheckpointError, match="is not 'gateprobe-checkpoint/1'"):
        load_model(checkpoint)


def test_missing_weights(checkpoint):
    (checkpoint / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(checkpoint)


# ----------------------------------------------------------------------------- training
def test_learning_rate_schedule():
    assert learning_rate(0, 1000, 1e-3) == pytest.approx(1e-3 / 200)
    assert learning_rate(199, 1000, 1e-3) == pytest.approx(1e-3)
    assert learning_rate(200, 1000, 1e-3) == pytest.approx(1e-3)
    assert learning_rate(600, 1000, 1e-3) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert learning_rate(1000, 1000, 1e-3) == pytest.approx(5e-5)
    assert learning_rate(5000, 1000, 1e-3) == pytest.approx(5e-5)


def test_inpainting_losses_known_answers():
    image = torch.full((1, 3, 4, 4), 0.5)
    hole = torch.zeros(1, 1, 4, 4)
    hole[..., :2, :] = 1  # top half is the hole
    perfect = inpainting_losses(image, hole, image.clone())
    assert all(perfect[k].item() == 0 for k in ("hole_l1", "valid_l1", "tv", "loss"))
    off = inpainting_losses(image, hole, image + 0.2)  # error 0.2 everywhere
    assert off["hole_l1"].item() == pytest.approx(0.2 * 0.5)  # mean over all pixels, half are hole
    assert off["valid_l1"].item() == pytest.approx(0.2 * 0.5)
    # the composite has a step of 0.2 between rows 1 and 2: 4 of 12 vertical differences per channel
    assert off["tv"].item() == pytest.approx(0.2 * 4 / 12)
    assert off["loss"].item() == pytest.approx(6 * 0.1 + 0.1 + 0.1 * 0.2 / 3)


@pytest.mark.slow  # trains both reference models (the module's `trained`): `make test`'s second step
@pytest.mark.parametrize("name", ["pconv-scenes", "gated-scenes"])
def test_training_reduces_the_loss(trained, name):
    folder, card = trained[name]
    losses = read_losses(folder)
    assert [r["step"] for r in losses] == [25, 50, 75, 100]
    assert losses[-1]["loss"] < 0.8 * losses[0]["loss"], losses
    assert all(math.isfinite(r["loss"]) for r in losses)
    assert card["training"]["step"] == 100 and card["model"] == name
    assert card["config"] == {"width": 8, "image_size": 32}
    assert card["training"]["batch_size"] == 4 and card["training"]["data"]["size"] == 32
    assert (folder / OPTIMIZER_FILE).is_file() and not (folder / "README.md").exists()
    assert load_model(folder).card["sha256"] == sha256_file(folder / WEIGHTS)


@pytest.mark.slow  # trains both reference models (the module's `trained`): `make test`'s second step
def test_resume_continues_from_the_saved_step(trained, tmp_path):
    """50 steps, then --resume to 100, equals 100 steps in one go (both within the warm-up, where the
    lr does not depend on the planned steps; batch k is always items 4k..4k+3)."""
    out = tmp_path / "ck"
    first = train("pconv-scenes", out, steps=50, **TINY)
    assert first["training"]["step"] == 50
    with pytest.raises(FileExistsError, match="pass --resume"):
        train("pconv-scenes", out, steps=100, **TINY)
    with open(out / LOSS_FILE, "a", newline="") as f:  # a row logged after the checkpoint by a run
        csv.writer(f).writerow([75, 9.9, 9.0, 9.0, 9.0, 9.0])  # that was stopped before saving again
    card = train("pconv-scenes", out, steps=100, resume=True, **TINY)
    assert card["training"]["step"] == 100
    losses = read_losses(out)
    assert [r["step"] for r in losses] == [25, 50, 75, 100]  # no duplicate or stale rows
    assert losses[2]["loss"] != 9.0
    reference = load_model(trained["pconv-scenes"][0]).state_dict()
    resumed = load_model(out).state_dict()
    for key, value in reference.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-7, msg=key)
    assert read_losses(trained["pconv-scenes"][0])[3]["loss"] == pytest.approx(losses[3]["loss"], rel=1e-3)


@pytest.mark.slow  # trains both reference models (the module's `trained`): `make test`'s second step
def test_finalize_writes_metrics_and_model_card(trained, tmp_path):
    import shutil

    folder = tmp_path / "pconv"
    shutil.copytree(trained["pconv-scenes"][0], folder)
    card = finalize(folder, eval_items=4)
    table = card["metrics"]["table"]
    assert list(table) == ["model", "biharmonic"]
    assert card["metrics"]["heldout"]["n"] == 4
    assert json.loads((folder / CARD).read_text())["metrics"]["table"] == table
    assert (folder / "loss_curve.png").stat().st_size > 1000
    readme = (folder / "README.md").read_text()
    assert "`pconv-scenes`" in readme and "| biharmonic |" in readme and card["sha256"] in readme
    load_model(folder)  # the weights still match the card after finalize


# ----------------------------------------------------------------------------- evaluation
def test_image_metrics_known_answers():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, size=(3, 24, 24)).astype(np.float32)
    hole = np.zeros((1, 24, 24), np.float32)
    hole[:, 6:14, 4:20] = 1
    perfect = image_metrics(image, hole, image.copy())
    assert perfect["hole_l1"] == 0 and perfect["ssim"] == pytest.approx(1.0)
    assert perfect["hole_psnr"] == pytest.approx(100.0)  # mse floored at 1e-10
    for e in (0.1, 0.05):
        filled = image + e * hole
        m = image_metrics(image, hole, filled)
        assert m["hole_l1"] == pytest.approx(e, rel=1e-4)
        assert m["hole_psnr"] == pytest.approx(-20 * math.log10(e), rel=1e-4)
        assert m["ssim"] < 1
    # errors outside the hole do not change the hole metrics
    outside = image + 0.3 * (1 - hole) + 0.1 * hole
    m = image_metrics(image, hole, outside)
    assert m["hole_l1"] == pytest.approx(0.1, rel=1e-4) and m["hole_psnr"] == pytest.approx(20.0, rel=1e-4)


def test_composite_takes_known_pixels_from_the_image():
    image, prediction = torch.full((1, 3, 2, 2), 0.25), torch.tensor([[-1.0, 0.5], [2.0, 0.75]]).expand(1, 3, 2, 2)
    hole = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)
    expected = torch.tensor([[0.0, 0.5], [1.0, 0.25]]).expand(1, 3, 2, 2)
    assert torch.equal(composite(image, hole, prediction), expected)


def test_metrics_table_and_format(checkpoint, items):
    model = load_model(checkpoint)
    table = metrics_table(model, items)
    assert list(table) == ["model", "model + sketch", "biharmonic"]
    for row in table.values():
        assert set(row) == {"hole_l1", "hole_psnr", "ssim"} and all(math.isfinite(v) for v in row.values())
    text = format_table(table)
    assert text.splitlines()[0] == "| method | hole L1 | hole PSNR (dB) | SSIM |"
    assert len(text.splitlines()) == 5


# ----------------------------------------------------------------------------- CLI
def _rows(stdout: str) -> dict[str, list[float]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("method", "---"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


@pytest.mark.slow  # trains both reference models (the module's `trained`): `make test`'s second step
def test_cli_evaluate_gated(trained, capsys):
    folder = trained["gated-scenes"][0]
    assert main(["evaluate", str(folder), "--n", "4"]) == 0
    out = capsys.readouterr().out
    assert "held-out Scenes seed 1, 4 images" in out
    rows = _rows(out)
    assert list(rows) == ["model", "model + sketch", "biharmonic"]
    for l1, psnr, ssim in rows.values():
        assert 0 <= l1 <= 1 and 0 < psnr < 100 and -1 <= ssim <= 1


@pytest.mark.slow  # trains both reference models (the module's `trained`): `make test`'s second step
def test_cli_evaluate_pconv(trained, capsys):
    assert main(["evaluate", str(trained["pconv-scenes"][0]), "--n", "4"]) == 0
    assert list(_rows(capsys.readouterr().out)) == ["model", "biharmonic"]


@pytest.mark.parametrize("argv,message", [
    (["evaluate", "{tmp}"], "no card.json"),
    (["train", "unet-scenes", "--out", "{tmp}/x", "--steps", "1"], "unknown model 'unet-scenes'"),
])
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gateprobe {argv[0]}: error: ") and message in lines[0]
    assert "Traceback" not in captured.err
