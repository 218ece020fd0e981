"""The Dash explorer (`gateprobe serve`): data loading and validation without a browser, then every
page in headless Chromium against real small runs recorded into a temporary folder.

The browser tests share one server (a werkzeug server in a thread, shut down at the end) and one
Chromium for the whole module, which keeps them to well under two minutes; screenshots go to
test-artifacts/. They are skipped when /usr/bin/chromium or /usr/bin/chromedriver is missing
(`apt-get install -y chromium chromium-driver`), and marked ``slow``: ``make test`` runs them in its
second step.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dashboards.app import create_app, describe
from dashboards.live import live_forward, live_model
from dashboards.pages import channel as channel_page
from dashboards.pages import layer as layer_page
from dashboards.pages.live import apply_relayout, parse_path, rasterise
from dashboards.store import RunStore

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1440,1000")


@pytest.fixture(scope="module")
def runs_dir(copy_scenes_runs, tmp_path_factory):
    """A runs folder: a gated and a partial-convolution run (random init, 16 Scenes images at 32x32:
    conftest.scenes_runs, copied), an incomplete run and a stray folder."""
    root = copy_scenes_runs(tmp_path_factory.mktemp("served-runs"))
    # an analysis table as `gateprobe analyze` writes it, for one channel the channel page is opened on
    import pandas as pd

    from probe.rundir.files import write_table

    write_table(root / "gated" / "interventions.parquet", pd.DataFrame({
        "intervention": ["sketch_off"], "layer": ["encoder.2"], "channel": [5], "quantity": ["gate_in_hole"],
        "baseline": [0.5], "intervened": [0.4], "delta": [-0.1], "ci_low": [-0.12], "ci_high": [-0.08],
        "p_value": [1e-4], "q_value": [1e-3]}))
    manifest = json.loads((root / "gated" / "manifest.json").read_text())
    (root / "halfway").mkdir()
    (root / "halfway" / "manifest.json").write_text(json.dumps(dict(manifest, complete=False)))
    (root / "notes").mkdir()
    return root


@pytest.fixture(scope="module")
def store(runs_dir):
    return RunStore(runs_dir).refresh()


def _text(component) -> str:
    from plotly.utils import PlotlyJSONEncoder

    return json.dumps(component.to_plotly_json(), cls=PlotlyJSONEncoder)


# ---------------------------------------------------------------- without a browser

def test_store_serves_complete_runs_and_says_why_others_are_skipped(store, runs_dir):
    assert sorted(store.runs) == ["gated", "pconv"]
    assert "incomplete" in store.skipped["halfway"]
    assert "not a run directory" in store.skipped["notes"]
    assert store.get("../gated") is None and store.get(None) is None
    lines = "\n".join(describe(store))
    assert "serving  gated" in lines and "skipped  halfway" in lines
    assert store.get("gated").gated_layers and store.get("pconv").partial_layers


def test_store_rescans_when_runs_change(runs_dir, tmp_path):
    import shutil

    root = tmp_path / "runs"
    root.mkdir()
    store = RunStore(root).refresh()
    assert not store.runs
    shutil.copytree(runs_dir / "pconv", root / "late")
    assert "late" in store.refresh().runs


def test_serve_prints_served_and_skipped_runs(runs_dir, monkeypatch, capsys):
    import waitress

    from probe.cli import main

    calls = []
    monkeypatch.setattr(waitress, "serve", lambda app, **kw: calls.append(dict(kw, debug=app.debug)))
    assert main(["serve", str(runs_dir), "--port", "8999"]) == 0
    out = capsys.readouterr().out
    assert "serving  gated" in out and "serving  pconv" in out and "skipped  halfway" in out
    assert [{k: c[k] for k in ("host", "port", "debug")} for c in calls] == [
        {"host": "127.0.0.1", "port": 8999, "debug": False}]
    assert main(["serve", str(runs_dir / "missing")]) == 2


def test_bad_url_parameters_get_messages(store, runs_dir):
    from dashboards.pages.common import Context

    context = Context(store=store, root=runs_dir)
    text = _text(layer_page.layout(store, {"run": "nope", "layer": "x", "sample": "99"}, context))
    assert "Unknown run 'nope'" in text
    text = _text(layer_page.layout(store, {"run": "gated", "layer": "../../etc", "sample": "-1"}, context))
    assert "Unknown layer of run gated '../../etc'" in text and "Unknown sample '-1'" in text
    text = _text(channel_page.layout(store, {"run": "gated", "layer": "encoder.1", "channel": "9999"}, context))
    assert "Unknown channel of encoder.1 '9999'" in text
    text = _text(channel_page.layout(store, {"run": "pconv"}, context))
    assert "has no gated layers" in text


def test_rasterise_drawn_shapes():
    size = (32, 32)
    hole, sketch, counts = rasterise([{"type": "rect", "x0": 2.2, "x1": 5.8, "y0": 10, "y1": 3},
                                      {"type": "path", "path": "M20,20L28,20L28,28L20,28Z"},
                                      {"type": "path", "path": "M0,31L31,0"},
                                      {"type": "line", "x0": 0, "y0": 0, "x1": 0, "y1": 5},
                                      {"type": "circle", "x0": 10, "x1": 14, "y0": 10, "y1": 14},
                                      {"type": "rect", "x0": -50, "x1": 1e5, "y0": 40, "y1": 60},
                                      {"type": "path", "path": "garbage"}, "not a shape"], size)
    assert hole[3:11, 3:6].all() and not hole[3:11, 6].any() and not hole[2, 3]
    assert hole[21:28, 21:28].all() and hole[12, 12]
    assert sketch[31, 0] and sketch[0, 31] and sketch[16, 15] and sketch[0:6, 0].all()
    assert counts == {"hole shapes": 4, "sketch strokes": 2, "ignored": 2}
    many = [{"type": "rect", "x0": i, "x1": i, "y0": 0, "y1": 0} for i in range(30)]
    hole, _, counts = rasterise(many, size, max_shapes=10)
    assert hole.sum() == 10 and counts["ignored"] == 20
    points, closed = parse_path("M" + "L".join(f"{i},{i}" for i in range(1500)) + "Z", max_points=100)
    assert len(points) == 100 and closed and points[-1].tolist() == [1499, 1499]
    huge = {"type": "path", "path": "M" + "L".join(f"{i},{i}" for i in range(5000))}
    assert rasterise([huge], size)[2]["ignored"] == 1  # over the path-length bound


def test_apply_relayout_tracks_draws_edits_and_erases():
    drawn = {"shapes": [{"type": "rect", "x0": 1, "x1": 3, "y0": 1, "y1": 3, "line": {"color": "red"}},
                        {"type": "path", "path": "M1,1L2,2"}]}
    shapes, changed = apply_relayout([], drawn, max_shapes=40)
    assert changed and shapes == [{"type": "rect", "x0": 1.0, "y0": 1.0, "x1": 3.0, "y1": 3.0},
                                  {"type": "path", "path": "M1,1L2,2"}]
    shapes, changed = apply_relayout(shapes, {"shapes[0].x1": 9, "shapes[7].x0": 1, "xaxis.range": [0, 1]}, 40)
    assert changed and shapes[0]["x1"] == 9.0 and len(shapes) == 2
    assert apply_relayout(shapes, {"autosize": True}, 40) == (shapes, False)
    assert apply_relayout(shapes, {"shapes": []}, 40) == ([], True)
    assert len(apply_relayout([], {"shapes": [drawn["shapes"][0]] * 500}, 40)[0]) == 40


def test_live_forward_runs_the_model_and_leaves_no_hooks(store, runs_dir):
    view = store.get("gated")
    live = live_model(view, runs_dir)
    assert live.model is not None and "random" in " ".join(live.notes)
    s = view.inputs(0)
    output, (kind, maps) = live_forward(live, s["image"], s["hole"], s["sketch"], "encoder.1")
    assert output.shape == s["image"].shape and 0 <= output.min() and output.max() <= 1
    assert kind == "gate" and maps.shape == (view.n_channels("encoder.1"),) + tuple(view.maps("encoder.1", 0).shape[1:])
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in live.model.modules())
    pconv = store.get("pconv")
    live_p = live_model(pconv, runs_dir)
    s = pconv.inputs(1)
    _, (kind, maps) = live_forward(live_p, s["image"], s["hole"], None, pconv.partial_layers[0])
    recorded = pconv.maps(pconv.partial_layers[0], 1, "valid")[0]
    assert kind == "valid" and np.array_equal(maps[0], recorded)  # the mask rule does not depend on weights


# ---------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def server(runs_dir):
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(runs_dir)
    httpd = make_server("127.0.0.1", 0, app.server, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, name="dash-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(server):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("headless Chromium not installed (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout: float = 30.0, what: str = ""):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script("try { return (" + script + "); } catch (e) { return null; }")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or script}")
        time.sleep(0.1)


def graph_js(graph_id: str) -> str:
    return f"document.querySelector('#{graph_id} .js-plotly-plot')"


def trace_type(graph_id: str, index: int = 0) -> str:
    return f"{graph_js(graph_id)}.data[{index}].type"


def graphs_ready(driver, timeout: float = 40.0):
    """Every graph on the page has drawn a figure that is not the 'loading…' placeholder."""
    wait_for(driver, "(() => { const g = document.querySelectorAll('.js-plotly-plot');"
                     " return g.length > 0 && Array.from(g).every(gd => gd._fullLayout &&"
                     " !(gd.layout.meta && gd.layout.meta.message === 'loading…')); })()", timeout, "graphs")


def open_page(driver, server, path: str):
    driver.get(server + path)
    wait_for(driver, "document.querySelector('#app-page') && document.querySelector('#app-page').children.length",
             60, "the page")


def severe_logs(driver) -> list:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def shot(driver, name: str) -> None:
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1440, min(max(height + 120, 900), 3000))
    driver.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))
    driver.set_window_size(1440, 1000)


def click_at(driver, graph_id: str, x_data: float, y_data: float) -> None:
    """A real mouse click on a graph at data coordinates (linear axis units)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    dx, dy = driver.execute_script(f"const gd = {graph_js(graph_id)}; const fl = gd._fullLayout;"
                                   "return [fl.xaxis.l2p(arguments[0]), fl.yaxis.l2p(arguments[1])];", x_data, y_data)
    drag = driver.find_element(By.CSS_SELECTOR, f"#{graph_id} .nsewdrag")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", drag)
    ActionChains(driver).move_to_element_with_offset(drag, dx, dy).pause(0.2).click().perform()


def choose(driver, dropdown_id: str, starts_with: str) -> None:
    """Pick the option of a dcc.Dropdown whose label starts with ``starts_with``."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, dropdown_id).click()
    options = wait_for(driver, "Array.from(document.querySelectorAll('[role=option]'))"
                               f".filter(o => o.innerText.startsWith({json.dumps(starts_with)})).length", 10)
    assert options
    driver.execute_script("Array.from(document.querySelectorAll('[role=option]'))"
                          f".filter(o => o.innerText.startsWith({json.dumps(starts_with)}))[0].click()")


def current(driver) -> tuple[str, dict]:
    from urllib.parse import parse_qs, urlparse

    url = urlparse(driver.current_url)
    return url.path, {k: v[0] for k, v in parse_qs(url.query).items()}


PAGES = {
    "overview": ("/", ["overview-diversity"]),
    "layer-gated": ("/layer?run=gated&layer=encoder.1&sample=1", ["layer-grid", "layer-panel", "layer-summary"]),
    "layer-partial": ("/layer?run=pconv", ["layer-grid", "layer-summary"]),
    "channel": ("/channel?run=gated&layer=encoder.2&channel=5", ["channel-samples", "channel-hist",
                                                                 "channel-labels"]),
    "labels": ("/labels?run=gated&layer=encoder.3", ["labels-heatmap", "labels-scatter"]),
    "evolution": ("/evolution?run=pconv&sample=2", ["evolution-masks", "evolution-detail", "evolution-curve",
                                                     "evolution-coverage"]),
    "compare": ("/compare?a=gated&b=pconv&sample=1", ["compare-panel-a", "compare-maps-b", "compare-diversity"]),
    "live": ("/live?run=gated&layer=encoder.1", ["live-canvas", "live-result", "live-gates"]),
}


@pytest.mark.slow  # headless Chromium: `make test`'s second step
def test_every_page_loads_with_data(browser, server):
    severe_logs(browser)
    for name, (path, graph_ids) in PAGES.items():
        open_page(browser, server, path)
        graphs_ready(browser)
        for graph_id in graph_ids:
            wait_for(browser, f"{graph_js(graph_id)}.data.length > 0", 40, f"{graph_id} on {name}")
        shot(browser, name)
        assert severe_logs(browser) == [], name
        if name == "channel":  # the optional analysis table of the run is shown for its channel
            extra = wait_for(browser, "document.querySelector('#channel-extra').innerText.includes('sketch_off') && "
                                      "document.querySelector('#channel-extra').innerText")
            assert "Sketch on/off" in extra and "-0.1" in extra and "ablation" in extra  # present + missing
    # the content is the run's: a gated grid is one heatmap tile per channel, a partial layer shows its mask
    open_page(browser, server, "/layer?run=gated&layer=encoder.1")
    wait_for(browser, f"{trace_type('layer-grid')} === 'heatmap'")
    assert browser.execute_script(f"return {graph_js('layer-grid')}.layout.meta.order.length") == 48
    open_page(browser, server, "/")
    assert "incomplete" in wait_for(browser, "document.querySelector('#overview-skipped').innerText")
    assert "gated" in browser.find_element("css selector", "#overview-runs").text


@pytest.mark.slow  # headless Chromium: `make test`'s second step
def test_channel_click_through_and_url_round_trip(browser, server):
    open_page(browser, server, "/layer?run=gated&layer=encoder.1&sample=2&sort=auc_hole&order=desc")
    wait_for(browser, f"{trace_type('layer-grid')} === 'heatmap'")
    path, params = current(browser)
    assert (params["layer"], params["sample"], params["sort"], params["order"]) == ("encoder.1", "2", "auc_hole",
                                                                                    "desc")
    meta = browser.execute_script(f"return {graph_js('layer-grid')}.layout.meta")
    h, w = meta["tile"]
    position = meta["columns"] + 1  # second row, second tile
    r, c = divmod(position, meta["columns"])
    expected = meta["order"][position]
    click_at(browser, "layer-grid", c * (w + meta["gap"]) + w / 2, r * (h + meta["gap"]) + h / 2)
    wait_for(browser, "window.location.pathname === '/channel'", 30, "the channel page")
    title = wait_for(browser, "document.querySelector('#channel-title').innerText")
    assert f"channel {expected} " in title
    wait_for(browser, "window.location.search.includes('scale=')", 30, "the canonical channel URL")
    assert current(browser)[1] == {"run": "gated", "layer": "encoder.1", "channel": str(expected), "scale": "fixed"}
    graphs_ready(browser)
    link = browser.find_element("css selector", "#channel-link").get_attribute("href")
    # the shareable link reopens the same view in a fresh page load
    open_page(browser, server, link.replace(server, ""))
    assert f"channel {expected}" in wait_for(browser, "document.querySelector('#channel-title').innerText")
    # controls write the URL; back restores the previous view from the URL
    browser.find_element("css selector", "#channel-next").click()
    wait_for(browser, f"new URLSearchParams(window.location.search).get('channel') === '{(expected + 1) % 48}'")
    assert f"channel {(expected + 1) % 48}" in wait_for(
        browser, f"document.querySelector('#channel-title').innerText.includes('channel {(expected + 1) % 48}') && "
                 "document.querySelector('#channel-title').innerText")
    browser.back()
    wait_for(browser, f"document.querySelector('#channel-title').innerText.includes('channel {expected} ')", 30,
             "the previous channel after back")
    assert current(browser)[1]["channel"] == str(expected)
    assert severe_logs(browser) == []


@pytest.mark.slow  # headless Chromium: `make test`'s second step
def test_switching_layers_updates_views_and_url(browser, server, store):
    open_page(browser, server, "/layer?run=gated&layer=encoder.0")
    wait_for(browser, f"{graph_js('layer-grid')}.layout.meta.order.length === 24")
    choose(browser, "layer-layer", "bottleneck.1")
    wait_for(browser, f"{graph_js('layer-grid')}.layout.meta.order.length === 96", 30, "the new layer's grid")
    wait_for(browser, "new URLSearchParams(window.location.search).get('layer') === 'bottleneck.1'")
    band = browser.execute_script(f"return {graph_js('layer-summary')}.layout.shapes[0].x0")
    assert band == pytest.approx(store.get("gated").gated_layers.index("bottleneck.1") - 0.45)  # band moved
    open_page(browser, server, "/labels?run=gated&layer=encoder.1")
    wait_for(browser, f"{graph_js('labels-heatmap')}.layout.meta.layer === 'encoder.1'")
    choose(browser, "labels-layer", "decoder.2")
    wait_for(browser, f"{graph_js('labels-heatmap')}.layout.meta.layer === 'decoder.2'", 30, "the new heatmap")
    highlighted = wait_for(browser, f"""(() => {{ const gd = {graph_js('labels-scatter')}; let n = 0;
        for (const t of gd._fullData) for (let i = 0; i < t.x.length; i++)
            if (t.customdata[i][0] === 'decoder.2' && t.marker.opacity[i] > 0.9) n++;
        return n; }})()""", 30, "the highlighted layer in the scatter")
    assert highlighted == 48
    assert severe_logs(browser) == []


@pytest.mark.slow  # headless Chromium: `make test`'s second step
def test_labels_heatmap_and_scatter_clicks_open_channels(browser, server):
    open_page(browser, server, "/labels?run=gated&layer=encoder.2")
    wait_for(browser, f"{trace_type('labels-heatmap')} === 'heatmap'")
    click_at(browser, "labels-heatmap", 7, 0)
    wait_for(browser, "window.location.pathname === '/channel'", 30, "the channel page from the heatmap")
    assert current(browser)[1]["channel"] == "7" and current(browser)[1]["layer"] == "encoder.2"
    open_page(browser, server, "/labels?run=gated&layer=encoder.2&scope=layer")
    wait_for(browser, f"{graph_js('labels-scatter')}.data.length > 0 && {trace_type('labels-scatter')} === 'scatter'")
    # the point farthest (on screen) from every other point, so the click cannot mean another channel
    target = browser.execute_script(f"""
        const gd = {graph_js('labels-scatter')}; const fl = gd._fullLayout; const pts = [];
        for (const t of gd._fullData) for (let i = 0; i < t.x.length; i++)
            pts.push([fl.xaxis.l2p(t.x[i]), fl.yaxis.l2p(t.y[i]), t.x[i], t.y[i], t.customdata[i]]);
        let best = null, far = -1;
        for (const p of pts) {{
            if (!(p[0] > 12 && p[0] < fl.xaxis._length - 12 && p[1] > 12 && p[1] < fl.yaxis._length - 12)) continue;
            let near = Infinity;
            for (const q of pts) if (q !== p) near = Math.min(near, Math.hypot(p[0] - q[0], p[1] - q[1]));
            if (near > far) {{ far = near; best = [p[2], p[3], p[4][0], p[4][1], near]; }}
        }}
        return best;""")
    assert target[4] > 10, target
    click_at(browser, "labels-scatter", target[0], target[1])
    wait_for(browser, "window.location.pathname === '/channel'", 30, "the channel page from the scatter")
    params = current(browser)[1]
    assert (params["layer"], params["channel"]) == (target[2], str(target[3]))
    graphs_ready(browser)
    assert severe_logs(browser) == []


@pytest.mark.slow  # headless Chromium: `make test`'s second step
def test_live_drawing_produces_a_new_output(browser, server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    open_page(browser, server, "/live?run=gated&layer=encoder.1&base=empty")
    status = wait_for(browser, "document.querySelector('#live-status').innerText")
    assert "0 hole shape(s)" in status and "hole 0%" in status
    # data[2] is the composite (the model output in the hole, the image elsewhere): what the user gets
    before = browser.execute_script(f"return {graph_js('live-result')}.data[2].source")
    drag = browser.find_element(By.CSS_SELECTOR, "#live-canvas .nsewdrag")
    size = drag.size
    ActionChains(browser).move_to_element_with_offset(drag, size["width"] * 0.25, size["height"] * 0.25) \
        .click_and_hold().move_by_offset(size["width"] * 0.3, size["height"] * 0.3).release().perform()
    status = wait_for(browser, "document.querySelector('#live-status').innerText.includes('1 hole shape') && "
                               "document.querySelector('#live-status').innerText", 30, "the drawn hole")
    assert "hole 0%" not in status
    after = wait_for(browser, f"{graph_js('live-result')}.data[2].source !== {json.dumps(before)} && "
                              f"{graph_js('live-result')}.data[2].source", 30, "a new output")
    assert after != before
    # a sketch stroke through the relayoutData path (what the open-path tool emits)
    browser.execute_script(f"""
        const gd = {graph_js('live-canvas')};
        Plotly.relayout(gd, {{shapes: gd.layout.shapes.concat([{{type: 'path', path: 'M9,9L20,20L9,22',
                                                                editable: true}}])}});""")
    wait_for(browser, "document.querySelector('#live-status').innerText.includes('1 sketch stroke')", 30,
             "the sketch stroke")
    shot(browser, "live-drawn")
    assert severe_logs(browser) == []


@pytest.mark.slow  # headless Chromium: `make test`'s second step
def test_bad_urls_get_messages_not_traces(browser, server):
    open_page(browser, server, "/layer?run=nope&layer=%3Cscript%3Ealert(1)%3C/script%3E")
    text = wait_for(browser, "document.querySelector('.problems') && document.querySelector('.problems').innerText")
    assert "Unknown run 'nope'" in text and "'<script>alert(1)</script>'" in text  # shown as text
    graphs_ready(browser)
    html_source = browser.execute_script("return document.querySelector('.problems').innerHTML")
    assert "<script>" not in html_source and "&lt;script&gt;" in html_source
    open_page(browser, server, "/channel?run=gated&layer=encoder.1&channel=12345")
    assert "Unknown channel" in wait_for(browser, "document.querySelector('.problems').innerText")
    open_page(browser, server, "/evolution?run=gated")
    assert "has no partial layers" in wait_for(browser, "document.querySelector('.problems') && "
                                                        "document.querySelector('.problems').innerText")
    open_page(browser, server, "/no/such/page")
    assert "Page not found" in wait_for(browser, "document.querySelector('#app-page').innerText")
    assert "Traceback" not in browser.page_source
    assert severe_logs(browser) == []


@pytest.mark.slow  # headless Chromium: `make test`'s second step
def test_claims_view_shows_value_control_and_difference_in_columns(browser, server):
    """The claims page: every G row with the trained value, the control and the difference apart;
    picking a control that is the run itself gives one line, not a table of verdicts."""
    open_page(browser, server, "/claims?a=pconv&b=gated")
    text = wait_for(browser, "document.querySelector('#claims-table table') && "
                             "document.querySelector('#claims-table').innerText", 60, "the claims table")
    headers = browser.execute_script("return Array.from(document.querySelectorAll('#claims-table th'))"
                                     ".map(th => th.innerText)")
    assert headers[:5] == ["claim", "verdict", "value [95%]", "control", "difference [95%]"]
    rows = browser.execute_script("return Array.from(document.querySelectorAll('#claims-table tbody tr'))"
                                  ".map(tr => Array.from(tr.children).map(td => td.innerText))")
    assert [r[0] for r in rows] == ["P1", "P2", "P3", "P4", "P5", "G1", "G2", "G3", "G4", "G5"]
    g1 = rows[5]
    assert g1[1] == "no control" and g1[3] == "n/a" and g1[4] == "n/a" and "[" in g1[2], g1
    assert "no control" in text
    choose(browser, "claims-baseline", "gated")
    error = wait_for(browser, "document.querySelector('#claims-error') && "
                              "document.querySelector('#claims-error').innerText", 30, "the refusal")
    assert "itself" in error and current(browser)[1].get("baseline") == "gated"
    assert severe_logs(browser) == []
