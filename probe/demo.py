"""``gateprobe demo``: record both shipped checkpoints on the default Scenes data, analyse the
gated run, write the comparison report and serve the dashboard. Runs already recorded with the
same model, data and settings are reused."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from .data import HELDOUT_SEED
from .errors import RunError
from .models import read_card
from .rundir.run import load_run

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
DEMO_MODELS = ("scenes-pconv", "scenes-gated")


def _reusable(run_dir: Path, sha256: str, n: int) -> bool:
    """True when ``run_dir`` is a complete run of the same weights over the same ``n`` images."""
    try:
        run = load_run(run_dir)
    except RunError:
        return False
    m = run.manifest
    return m["model"].get("sha256") == sha256 and m["data"]["n"] == n and m["data"]["kind"] == "scenes" \
        and m["data"]["seed"] == HELDOUT_SEED and m["data"]["size"] == 64


def run_demo(out: str | Path = "runs/demo", n: int = 512, analysis_images: int = 64, serve: bool = True,
             host: str = "127.0.0.1", port: int = 8050, checkpoints: str | Path = CHECKPOINTS) -> Path:
    """Run the demo; returns the report's path."""
    from .analysis import analyze
    from .models.sources import resolve_model
    from .recording.loop import record
    from .report import build_report

    out, checkpoints = Path(out), Path(checkpoints)
    missing = [name for name in DEMO_MODELS if not (checkpoints / name / "card.json").is_file()]
    if missing:
        raise FileNotFoundError(f"shipped checkpoints missing in {checkpoints}: {missing}; restore them from git")
    stages = [f"record {name}" for name in DEMO_MODELS] + ["analyse scenes-gated", "report"]
    timings = {}
    runs = {}
    with tqdm(total=len(stages), desc="demo", unit="stage", position=0) as bar:
        for name in DEMO_MODELS:
            bar.set_postfix_str(f"record {name}")
            start = time.time()
            run_dir = out / name
            card = read_card(checkpoints / name)
            if not _reusable(run_dir, card["sha256"], n):
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                record(resolve_model(str(checkpoints / name)), "scenes:64", run_dir, n=n,
                       command=f"gateprobe record --model checkpoints/{name} --data scenes:64 --n {n} --out {run_dir}")
            runs[name] = run_dir
            timings[f"record {name}"] = time.time() - start
            bar.update(1)
        bar.set_postfix_str("analyse scenes-gated")
        start = time.time()
        gated = load_run(runs["scenes-gated"])
        if "analyses" not in gated.manifest:
            analyze(gated, n=analysis_images)
        timings["analyse"] = time.time() - start
        bar.update(1)
        bar.set_postfix_str("report")
        start = time.time()
        html, md = build_report([runs["scenes-pconv"], runs["scenes-gated"]], out / "scenes-pconv-vs-gated.html",
                                title="gateprobe demo: partial vs gated convolution on Scenes")
        timings["report"] = time.time() - start
        bar.update(1)
    (out / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    print(f"report: {html.resolve()}\nsummary: {md.resolve()}")
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if serve:
        from .serve import serve_runs

        serve_runs(out, host, port)
    return html
