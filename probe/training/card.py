"""The README.md model card and loss-curve plot of a checkpoint folder, made from its card.json."""
from __future__ import annotations

import json
from pathlib import Path

from .evaluate import format_table


def plot_loss_curve(losses_csv: str | Path, png: str | Path) -> None:
    """Plot the total and per-term training losses of ``losses.csv`` into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(losses_csv)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for column in ("loss", "hole_l1", "valid_l1", "tv"):
        smooth = frame[column].rolling(20, min_periods=1).mean()
        ax.plot(frame["step"], smooth, label=column)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (rolling mean of 20 logs)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


def _architecture(card: dict) -> str:
    """One line per recorded layer kind, from the registry's description and the model itself."""
    from ..adapters import find_sites
    from ..models import create_model, model_spec

    model = create_model(card["model"], **card["config"])
    sites = find_sites(model)
    kinds = {kind: [s for s in sites if s.kind == kind] for kind in ("gated", "partial")}
    lines = [model_spec(card["model"]).description + "."]
    for kind, found in kinds.items():
        if found:
            geometry = ", ".join(f"{s.name} ({s.kernel}x{s.kernel}, stride {s.stride}, dilation {s.dilation}, "
                                 f"{s.channels} ch)" for s in found)
            lines.append(f"{len(found)} {kind} layers: {geometry}.")
    return "\n".join(lines)


def write_model_card(folder: str | Path) -> None:
    """Write ``folder/README.md`` from ``card.json``."""
    folder = Path(folder)
    card = json.loads((folder / "card.json").read_text())
    t, metrics = card["training"], card.get("metrics", {})
    data = t["data"]
    text = f"""# {folder.name}: `{card['model']}`

Config: `{json.dumps(card['config'])}`, {card['parameters']:,} parameters, weights sha256 `{card['sha256']}`.

## Architecture
{_architecture(card)}

## Data
Scenes at {data['size']}x{data['size']}, classes {', '.join(data['classes'])}.
Training stream: seed {data['seed']}, batch k = items k*{t['batch_size']} .. k*{t['batch_size']}+{t['batch_size'] - 1}
({t['step'] * t['batch_size']:,} images seen). Held-out: seed {metrics.get('heldout', {}).get('seed', 1)},
indices {metrics.get('heldout', {}).get('indices', 'n/a')} (disjoint: the generator is seeded by (seed, index)).
Holes: {data['hole_mode']} (DeepFill v2 strokes plus a box half of the time), hole fraction {data['hole_area']}.
Sketch: label boundaries inside the hole, given on {t['sketch_batches']}.

## Training
Losses {json.dumps(t['loss_weights'])} (hole L1, valid L1, total variation of the composite); Adam, peak lr
{t['lr']}, warm-up then cosine decay; {t['step']:,} steps of batch {t['batch_size']} in {t['seconds'] / 60:.1f} min
on {t['machine']}.

Reproduce: `{t['command']}`

![loss curve](loss_curve.png)

## Held-out metrics
"""
    if "table" in metrics:
        text += format_table(metrics["table"]) + "\n"
    text += card.get("notes", "")
    (folder / "README.md").write_text(text)
