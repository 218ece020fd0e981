"""Training loop for the reference models (CPU-friendly, seeded, resumable).

Loss = 6 * hole L1 + valid L1 + 0.1 * total variation of the composite (Liu et al.'s weights for
the first two). Both models read the same stream: batch k holds Scenes items k*B .. k*B+B-1 of the
training seed. The sketch (for models that take one) is given on even batches, i.e. half of them.
"""
from __future__ import annotations

import csv
import io
import json
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import HELDOUT_SEED, TRAIN_SEED, Scenes, collate
from ..devices import batch_to, model_device, resolve_device
from ..models import create_model
from ..models.checkpoints import CARD, WEIGHTS, read_card, save_checkpoint
from ..rundir.files import write_atomic, write_json
from .evaluate import composite

LOSS_WEIGHTS = {"hole_l1": 6.0, "valid_l1": 1.0, "tv": 0.1}
OPTIMIZER_FILE, LOSS_FILE = "optimizer.safetensors", "losses.csv"
LOSS_COLUMNS = ["step", "seconds", "loss", "hole_l1", "valid_l1", "tv"]


def inpainting_losses(image, hole, prediction) -> dict[str, torch.Tensor]:
    """The loss terms for ``image``/``prediction`` ``[B,3,H,W]`` and ``hole`` ``[B,1,H,W]``."""
    err = (prediction - image).abs()
    comp = composite(image, hole, prediction)
    tv = (comp[..., 1:, :] - comp[..., :-1, :]).abs().mean() + (comp[..., 1:] - comp[..., :-1]).abs().mean()
    terms = {"hole_l1": (err * hole).mean(), "valid_l1": (err * (1 - hole)).mean(), "tv": tv}
    terms["loss"] = sum(LOSS_WEIGHTS[k] * terms[k] for k in LOSS_WEIGHTS)
    return terms


def _save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import save

    flat = {f"{i}.{name}": value.detach().clone().reshape(value.shape) if value.dim() else value.reshape(1)
            for i, state in optimizer.state_dict()["state"].items() for name, value in state.items()}
    write_atomic(folder / OPTIMIZER_FILE, save(flat))


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    from safetensors.torch import load_file

    flat = load_file(folder / OPTIMIZER_FILE)
    state: dict[int, dict] = {}
    for key, value in flat.items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value.reshape(()) if name == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def learning_rate(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over 200 steps, then cosine decay to 5% of ``peak`` at ``steps``."""
    import math

    if step < 200:
        return peak * (step + 1) / 200
    progress = min(1.0, (step - 200) / max(1, steps - 200))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def check_train_settings(steps, minutes, batch_size, lr, size, width, seed, checkpoint_every, threads,
                         eval_items) -> None:
    """One :class:`~probe.errors.SettingsError` line for a training setting out of its range."""
    import math

    from ..errors import SettingsError

    def whole(name, value, low, optional=False):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SettingsError(f"--{name} must be an integer >= {low}, not {value!r}")

    def positive(name, value, optional=False):
        if optional and value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise SettingsError(f"--{name} must be a number > 0, not {value!r}")

    whole("steps", steps, 1)
    positive("minutes", minutes, optional=True)
    whole("batch-size", batch_size, 1)
    positive("lr", lr)
    whole("size", size, 1)
    whole("width", width, 1, optional=True)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise SettingsError(f"--seed must be an integer from 0 to {2 ** 32 - 1}, not {seed!r}")
    whole("checkpoint-every", checkpoint_every, 1)
    whole("threads", threads, 1, optional=True)
    whole("eval-items", eval_items, 0)


def train(model_name: str, out: str | Path, steps: int = 20000, minutes: float | None = None,
          batch_size: int = 16, lr: float = 5e-4, size: int = 64, width: int | None = None,
          seed: int = 0, resume: bool = False, checkpoint_every: int = 500, threads: int | None = None,
          eval_items: int = 256, command: str = "", device: str | None = "cpu") -> dict:
    """Train ``model_name`` into checkpoint folder ``out`` for ``steps`` steps (or until ``minutes``
    of wall time), writing ``losses.csv`` and a checkpoint every ``checkpoint_every`` steps; at the
    end evaluate on ``eval_items`` held-out items and write the card, the loss curve and README.md."""
    check_train_settings(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, size=size, width=width,
                         seed=seed, checkpoint_every=checkpoint_every, threads=threads, eval_items=eval_items)
    out = Path(out)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    config = {"image_size": size} | ({"width": width} if width else {})
    model = create_model(model_name, **config).to(resolve_device(device))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start_step, elapsed = 0, 0.0
    if resume and (out / WEIGHTS).exists():
        from safetensors.torch import load_file

        card = read_card(out)
        model.load_state_dict(load_file(out / WEIGHTS, device=str(model_device(model))))
        _load_optimizer(optimizer, out)
        start_step, elapsed = card["training"]["step"], card["training"]["seconds"]
    elif (out / WEIGHTS).exists():
        raise FileExistsError(f"{out} already holds a checkpoint; pass --resume to continue it or choose "
                              "another --out")
    out.mkdir(parents=True, exist_ok=True)
    data = Scenes(size=size, n=steps * batch_size, seed=TRAIN_SEED)
    settings = {"steps": steps, "minutes": minutes, "batch_size": batch_size, "lr": lr, "seed": seed,
                "loss_weights": LOSS_WEIGHTS, "sketch_batches": "even batches" if model.accepts_sketch else "none",
                "data": data.spec() | {"n": None}, "threads": torch.get_num_threads(),
                "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s), {platform.node()}",
                "command": command}
    head = io.StringIO()
    csv.writer(head).writerows([LOSS_COLUMNS] + (_logged_rows(out / LOSS_FILE, start_step) if start_step else []))
    write_atomic(out / LOSS_FILE, head.getvalue().encode())
    log = open(out / LOSS_FILE, "a", newline="")
    writer = csv.writer(log)
    model.train()
    began = time.time() - elapsed
    step = start_step
    with tqdm(total=steps, initial=start_step, desc=f"train {model_name}") as bar:
        while step < steps and (minutes is None or time.time() - began < minutes * 60):
            batch = batch_to(collate([data[i] for i in range(step * batch_size, (step + 1) * batch_size)]),
                             model_device(model))
            sketch = batch["sketch"] if model.accepts_sketch and step % 2 == 0 else None
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, steps, lr)
            terms = inpainting_losses(batch["image"], batch["hole"], model(batch["image"], batch["hole"], sketch))
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            step += 1
            bar.update(1)
            if step % 25 == 0:
                writer.writerow([step, round(time.time() - began, 1)] + [f"{terms[k].item():.5f}" for k in LOSS_COLUMNS[2:]])
                log.flush()
                bar.set_postfix(loss=f"{terms['loss'].item():.4f}")
            if step % checkpoint_every == 0:
                _checkpoint(model, optimizer, out, step, time.time() - began, settings)
    log.close()
    card = _checkpoint(model, optimizer, out, step, time.time() - began, settings)
    if eval_items:
        card = finalize(out, eval_items)
    return card


def _logged_rows(path: Path, last_step: int) -> list[list[str]]:
    """The rows of loss log ``path`` up to ``last_step``: a resumed run continues from its checkpoint,
    so rows logged after it (by a run stopped between checkpoints) are dropped, not duplicated."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= last_step]


def _checkpoint(model, optimizer, out: Path, step: int, seconds: float, settings: dict) -> dict:
    was_training = model.training
    card = save_checkpoint(model, out, training=settings | {"step": step, "seconds": round(seconds, 1)})
    _save_optimizer(optimizer, out)
    model.train(was_training)
    return card


def finalize(out: str | Path, eval_items: int = 256) -> dict:
    """Evaluate checkpoint ``out`` on the held-out set, store the metrics in its card, and write
    ``loss_curve.png`` and the ``README.md`` model card."""
    from ..data import heldout_items
    from ..models.checkpoints import load_model
    from .card import plot_loss_curve, write_model_card
    from .evaluate import metrics_table

    out = Path(out)
    model = load_model(out)
    items = heldout_items(eval_items, size=model.config["image_size"])
    table = metrics_table(model, items, progress=True)
    card = json.loads((out / CARD).read_text())
    card["metrics"] = {"heldout": {"seed": HELDOUT_SEED, "n": eval_items, "indices": f"0..{eval_items - 1}"}, "table": table}
    write_json(out / CARD, card)
    plot_loss_curve(out / LOSS_FILE, out / "loss_curve.png")
    write_model_card(out)
    return card
