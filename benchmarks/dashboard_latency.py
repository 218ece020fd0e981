"""Dashboard latency: how long the explorer takes to answer the interactions a user makes most
(switching layer, sample and channel, stepping through mask evolution, the labels view, a live
drawing) and to load a page.

Each interaction is measured as the user sees it, by HTTP POSTs to ``/_dash-update-component``
against the real server (werkzeug, in a thread): the callbacks that one change fires, posted one
after the other (an upper bound: the browser posts them in parallel), over random switches that
mix cold (first visit) and warm (cached) views. (The one-line callbacks that copy a page's state
into the URL are left out.) Page load is the router callback plus the page's
initial callbacks over HTTP and, when headless Chromium is installed, the time from navigation to
every graph drawn in a real browser.

Run: ``python benchmarks/dashboard_latency.py [--runs DIR] [--repeats 60]`` (without ``--runs`` it
records a gated and a partial-convolution run, 64 images at 64x64, into a temporary folder, using
the shipped checkpoints when present). Target: p95 < 150 ms per interaction.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import shipped_or_random  # noqa: E402

TARGET_MS = 150.0


def record_runs(root: Path) -> None:
    from probe.recording.loop import record

    for name, registry in (("scenes-gated", "gated-scenes"), ("scenes-pconv", "pconv-scenes")):
        model, label = shipped_or_random(name, registry)
        print(f"recording {label} into {root / registry} ...", flush=True)
        record(model, "scenes:64", root / registry, n=64, samples=8, progress=False)


class Client:
    """Posts callback requests built from the app's callback map, like the renderer does."""

    def __init__(self, app, base: str):
        from dash._utils import split_callback_id

        self.base, self.callbacks = base, {}
        for key, spec in app.callback_map.items():
            outputs = split_callback_id(key)
            self.callbacks[key] = {"outputs": outputs if isinstance(outputs, list) else [outputs],
                                   "inputs": spec["inputs"], "state": spec["state"]}

    def key(self, *outputs: str) -> str:
        """The callback whose outputs include every ``id.property`` in ``outputs``."""
        for key, spec in self.callbacks.items():
            names = {f"{o['id']}.{o['property']}" for o in spec["outputs"]}
            if set(outputs) <= names:
                return key
        raise KeyError(outputs)

    def post(self, key: str, values: dict, changed: list[str]) -> float:
        """POST one callback; ``values`` maps ``id.property`` to the value of each input/state."""
        spec = self.callbacks[key]

        def fill(items):
            return [{"id": d["id"], "property": d["property"], "value": values.get(f"{d['id']}.{d['property']}")}
                    for d in items]
        outputs = spec["outputs"]
        body = {"output": key, "outputs": outputs if len(outputs) > 1 else outputs[0], "inputs": fill(spec["inputs"]),
                "state": fill(spec["state"]), "changedPropIds": changed}
        request = urllib.request.Request(self.base + "/_dash-update-component", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request) as response:
            payload = response.read()
            status = response.status
        elapsed = (time.perf_counter() - start) * 1000
        if status not in (200, 204) or b"Could not draw this view" in payload:
            raise RuntimeError(f"{key}: HTTP {status} {payload[:300]!r}")
        return elapsed

    def get(self, path: str) -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(self.base + path) as response:
            response.read()
        return (time.perf_counter() - start) * 1000


def percentiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered), p95


def measure(app, client: Client, repeats: int, rng: random.Random) -> dict[str, list[float]]:
    store = app.run_store
    gated = next(v for v in store.runs.values() if v.gated_layers)
    partial = next((v for v in store.runs.values() if v.partial_layers), None)
    results: dict[str, list[float]] = {}

    def add(name, value):
        results.setdefault(name, []).append(value)

    layer_values = {"layer-runname.data": gated.name, "layer-sort.value": "auc_hole", "layer-order.value": "desc",
                    "layer-scale.value": "fixed"}
    for _ in range(repeats):
        layer = rng.choice(gated.layer_names)
        sample = rng.randrange(gated.n_samples)
        values = dict(layer_values, **{"layer-layer.value": layer, "layer-sample.value": sample})
        ms = client.post(client.key("layer-grid.figure"), values, ["layer-layer.value"])
        ms += client.post(client.key("layer-summary.figure"), values, ["layer-layer.value"])
        add("switch layer (layer view: grid, summary)", ms)
        sample = rng.randrange(gated.n_samples)
        values["layer-sample.value"] = sample
        ms = client.post(client.key("layer-grid.figure"), values, ["layer-sample.value"])
        ms += client.post(client.key("layer-panel.figure"), values, ["layer-sample.value"])
        add("switch sample (layer view: grid, images)", ms)
        values["layer-sort.value"] = rng.choice(["channel"] + gated.statistics())
        add("re-sort channels (layer view)", client.post(client.key("layer-grid.figure"), values,
                                                         ["layer-sort.value"]))

        layer = rng.choice(gated.gated_layers)
        channel = rng.randrange(gated.n_channels(layer))
        values = {"channel-runname.data": gated.name, "channel-layer.value": layer, "channel-channel.value": channel,
                  "channel-scale.value": "fixed"}
        ms = client.post(client.key("channel-samples.figure"), values, ["channel-channel.value"])
        ms += client.post(client.key("channel-hist.figure"), values, ["channel-channel.value"])
        add("switch channel (channel view: samples, histogram, labels)", ms)

        values = {"labels-runname.data": gated.name, "labels-layer.value": rng.choice(gated.gated_layers),
                  "labels-metric.value": rng.choice(["auc", "iou"]), "labels-scope.value": "layer"}
        ms = client.post(client.key("labels-heatmap.figure"), values, ["labels-layer.value"])
        ms += client.post(client.key("labels-scatter.figure"), values, ["labels-layer.value"])
        add("switch layer (labels view: heatmap, scatter)", ms)

        if partial is not None:
            values = {"evolution-runname.data": partial.name,
                      "evolution-sample.value": rng.randrange(partial.n_samples),
                      "evolution-layer.value": rng.randrange(len(partial.partial_layers))}
            ms = client.post(client.key("evolution-masks.figure"), values, ["evolution-layer.value"])
            ms += client.post(client.key("evolution-curve.figure"), values, ["evolution-layer.value"])
            add("switch layer (mask evolution: masks, detail, curves)", ms)

        size = gated.image_size
        x0, y0 = rng.uniform(0, size[1] * 0.6), rng.uniform(0, size[0] * 0.6)
        shapes = [{"type": "rect", "x0": x0, "y0": y0, "x1": x0 + size[1] * 0.3, "y1": y0 + size[0] * 0.3},
                  {"type": "path", "path": f"M{x0 + 2},{y0 + 2}L{x0 + 8},{y0 + 9}L{x0 + 12},{y0 + 3}"}]
        values = {"live-shapes.data": shapes, "live-layer.value": rng.choice(gated.layer_names),
                  "live-sample.value": rng.randrange(gated.n_samples), "live-base.value": "recorded",
                  "live-runname.data": gated.name}
        add("live: draw -> model output + gates", client.post(client.key("live-result.figure"), values,
                                                              ["live-shapes.data"]))
    return results


def page_loads(app, client: Client, rng: random.Random, repeats: int = 5) -> dict[str, list[float]]:
    """Router render of each page plus its first callbacks, over HTTP (no browser)."""
    gated = next(v for v in app.run_store.runs.values() if v.gated_layers)
    results: dict[str, list[float]] = {}
    for _ in range(repeats):
        layer = rng.choice(gated.gated_layers)
        ms = client.get("/") + client.get("/_dash-layout") + client.get("/_dash-dependencies")
        values = {"url.pathname": "/layer", "url.search": f"?run={gated.name}&layer={layer}", "app-last.data": None}
        ms += client.post(client.key("app-page.children"), values, ["url.pathname"])
        values = {"layer-runname.data": gated.name, "layer-layer.value": layer, "layer-sample.value": 0,
                  "layer-sort.value": "channel", "layer-order.value": "asc", "layer-scale.value": "fixed"}
        for output in ("layer-grid.figure", "layer-panel.figure", "layer-summary.figure"):
            ms += client.post(client.key(output), values, [])
        results.setdefault("first load of /layer over HTTP (HTML, layout, router, 3 graphs)", []).append(ms)
        values = {"url.pathname": "/", "url.search": "", "app-last.data": None}
        results.setdefault("overview render (router callback)", []).append(
            client.post(client.key("app-page.children"), values, ["url.pathname"]))
    return results


def browser_loads(base: str, run: str, repeats: int = 3) -> dict[str, list[float]]:
    """Navigation to all graphs drawn, in headless Chromium (skipped when it is not installed)."""
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        return {}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    ready = ("return (() => { const g = document.querySelectorAll('.js-plotly-plot');"
             " return g.length >= arguments[0] && Array.from(g).every(gd => gd._fullLayout && gd.data &&"
             " gd.data.length && !(gd.layout.meta && gd.layout.meta.message === 'loading…')); })()")
    results: dict[str, list[float]] = {}
    try:
        for path, graphs in (("/", 2), (f"/layer?run={run}", 3), (f"/channel?run={run}", 3)):
            for _ in range(repeats):
                driver.get("about:blank")
                start = time.perf_counter()
                driver.get(base + path)
                while not driver.execute_script(ready, graphs):
                    if time.perf_counter() - start > 60:
                        raise RuntimeError(f"{path} did not finish loading")
                    time.sleep(0.01)
                results.setdefault(f"browser: navigate to {path.split('?')[0]} until every graph is drawn",
                                   []).append((time.perf_counter() - start) * 1000)
    finally:
        driver.quit()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=None, help="runs folder to serve (default: record two into a temp dir)")
    parser.add_argument("--repeats", type=int, default=60, help="random switches per interaction")
    parser.add_argument("--no-browser", action="store_true", help="skip the headless-Chromium page loads")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import logging

    from werkzeug.serving import make_server

    from dashboards.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.runs) if args.runs else Path(tmp)
        if not args.runs:
            record_runs(root)
        app = create_app(root)
        server = make_server("127.0.0.1", 0, app.server, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_port}"
            client = Client(app, base)
            rng = random.Random(args.seed)
            gated = next(v for v in app.run_store.runs.values() if v.gated_layers)
            print(f"serving {', '.join(app.run_store.runs)} from {root}; torch threads {_threads()}, "
                  f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
            results = measure(app, client, args.repeats, rng)
            results.update(page_loads(app, client, rng))
            if not args.no_browser:
                results.update(browser_loads(base, gated.name))
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
    print(f"\n{'interaction (ms)':<68} {'n':>4} {'p50':>8} {'p95':>8}  target p95 < {TARGET_MS:.0f}")
    worst = 0.0
    for name, values in results.items():
        p50, p95 = percentiles(values)
        interactive = not (name.startswith("first load") or name.startswith("browser") or name.startswith("overview"))
        mark = ("ok" if p95 < TARGET_MS else "SLOW") if interactive else "(page load)"
        worst = max(worst, p95) if interactive else worst
        print(f"{name:<68} {len(values):>4} {p50:8.1f} {p95:8.1f}  {mark}")
    print(f"\nworst interaction p95: {worst:.1f} ms")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    sys.exit(main())
