"""Held-out evaluation: hole L1, hole PSNR and SSIM, beside skimage's biharmonic inpainting."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import collate
from ..devices import batch_to, model_device
from ..errors import DataError


def composite(image: torch.Tensor, hole: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Known pixels from ``image``, hole pixels from ``prediction`` clamped to [0, 1]; ``[B,3,H,W]``."""
    return image * (1 - hole) + prediction.clamp(0, 1) * hole


def image_metrics(image: np.ndarray, hole: np.ndarray, filled: np.ndarray) -> dict:
    """Metrics of one filled image: ``image``/``filled`` ``[3,H,W]`` in [0,1], ``hole`` ``[1,H,W]``.
    hole_l1 and hole_psnr are over hole pixels only; ssim over the whole composited image."""
    from skimage.metrics import structural_similarity

    inside = hole[0] > 0.5
    if not inside.any():
        raise DataError("image_metrics: the hole is empty, so hole metrics are undefined; use images with holes")
    err = (filled - image)[:, inside]
    mse = float((err ** 2).mean())
    return {
        "hole_l1": float(np.abs(err).mean()),
        "hole_psnr": float(10 * np.log10(1.0 / max(mse, 1e-10))),
        "ssim": float(structural_similarity(image, filled, channel_axis=0, data_range=1.0)),
    }


def _mean_metrics(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


@torch.inference_mode()
def evaluate_model(model, items: list[dict], use_sketch: bool = False, batch_size: int = 64,
                   progress: bool = False) -> dict:
    """Mean metrics of ``model`` over held-out ``items`` (see :func:`probe.data.heldout_items`)."""
    rows, device = [], model_device(model)
    for start in tqdm(range(0, len(items), batch_size), desc="evaluate", disable=not progress, leave=False):
        batch = batch_to(collate(items[start:start + batch_size]), device)
        sketch = batch["sketch"] if use_sketch else None
        filled = composite(batch["image"], batch["hole"], model(batch["image"], batch["hole"], sketch).float()).cpu()
        batch = {k: v.cpu() for k, v in batch.items()}
        rows += [image_metrics(i.numpy(), h.numpy(), f.numpy())
                 for i, h, f in zip(batch["image"], batch["hole"], filled)]
    return _mean_metrics(rows)


def evaluate_biharmonic(items: list[dict], progress: bool = False) -> dict:
    """The classical baseline, ``skimage.restoration.inpaint_biharmonic``, on the same items."""
    from skimage.restoration import inpaint_biharmonic

    rows = []
    for it in tqdm(items, desc="biharmonic", disable=not progress, leave=False):
        image, hole = it["image"].numpy(), it["hole"].numpy()
        known = image * (1 - hole)
        filled = inpaint_biharmonic(known.transpose(1, 2, 0), hole[0] > 0.5, channel_axis=-1)
        filled = np.clip(filled.transpose(2, 0, 1), 0, 1).astype(np.float32)
        rows.append(image_metrics(image, hole, image * (1 - hole) + filled * hole))
    return _mean_metrics(rows)


def metrics_table(model, items: list[dict], progress: bool = False) -> dict[str, dict]:
    """``{method: metrics}`` for the model (with and without the sketch where it takes one) and
    the biharmonic baseline, all on the same items."""
    table = {"model": evaluate_model(model, items, progress=progress)}
    if getattr(model, "accepts_sketch", False):
        table["model + sketch"] = evaluate_model(model, items, use_sketch=True, progress=progress)
    table["biharmonic"] = evaluate_biharmonic(items, progress=progress)
    return table


def format_table(table: dict[str, dict]) -> str:
    """A Markdown table of :func:`metrics_table`'s result."""
    lines = ["| method | hole L1 | hole PSNR (dB) | SSIM |", "|---|---|---|---|"]
    lines += [f"| {name} | {m['hole_l1']:.4f} | {m['hole_psnr']:.2f} | {m['ssim']:.4f} |" for name, m in table.items()]
    return "\n".join(lines)
