"""A run directory is checked when it is read (issue 29, item 1).

Each row of :data:`DAMAGED` edits a copy of a complete run the way a careless collaborator would
(a value out of its range, rows twice, a dropped column, a column of strings, an edited manifest
field, a symbolic link to another run's file) and expects every reader -- ``claims``, ``report``,
``merge``, ``analyze`` through :func:`probe.cli.main`, :func:`probe.load_run` and the explorer's
run store -- to refuse it with exactly one line naming the file and the problem, exit code 2, no
traceback, no output written, and every run file unchanged byte for byte.

Every table edit runs twice: on a run recording its tables' sha256 (the edited table is named as
changed since the run was written), and on a run recorded before the hashes were kept (no
``table_sha256`` in the manifest), where the schema, range, key and row checks must find it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch
from test_reliability import SIZE, digest, error_line, make_folder, run_cli

from dashboards.store import RunStore
from probe.cli import main
from probe.errors import RunError
from probe.models import create_model
from probe.models.checkpoints import save_checkpoint
from probe.models.sources import resolve_model
from probe.recording.loop import record
from probe.rundir.files import sha256_file
from probe.rundir.run import TABLES, Run, load_run
from probe.rundir.validate import DIGESTS

CHANGED = "changed since the run was written"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A gated and a partial run (width 8, 32x32, six images of a folder dataset) under ``runs/``."""
    root = tmp_path_factory.mktemp("validation")
    data = make_folder(root / "data")
    torch.manual_seed(0)
    for arch, name in (("gated-scenes", "gated"), ("pconv-scenes", "pconv")):
        save_checkpoint(create_model(arch, width=8, image_size=SIZE), root / f"ckpt-{name}")
        record(resolve_model(str(root / f"ckpt-{name}")), f"folder:{data}", root / "runs" / name, batch_size=2,
               samples=1, progress=False)
    return root / "runs"


# ============================================================================ the edits
def _manifest(run: Path, **changes) -> None:
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps(manifest | changes))


def _table(run: Path, name: str, edit: Callable[[pd.DataFrame], pd.DataFrame | None]) -> None:
    """Edit ``RUN/name.parquet`` with pandas, as a collaborator's script would."""
    frame = pd.read_parquet(run / f"{name}.parquet")
    edited = edit(frame)
    (frame if edited is None else edited).to_parquet(run / f"{name}.parquet", index=False)


def _set(column: str, value, row: int = 0, where: Callable | None = None):
    """An edit setting ``column`` at ``row`` (or on every row ``where(frame)`` selects) to ``value``."""
    def edit(frame: pd.DataFrame) -> None:
        if where is not None:
            frame.loc[where(frame), column] = value
        else:
            frame.loc[row, column] = value
    return edit


def _other_run_file(name: str, source: str = "pconv"):
    """An edit replacing ``RUN/name`` by a symbolic link to the same file of the ``source`` run."""
    def edit(run: Path) -> None:
        (run / name).unlink()
        (run / name).symlink_to(run.parent / source / name)
    return edit


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@dataclass
class Damaged:
    """One row: ``edit(run folder)`` damages the ``run`` (``gated`` or ``pconv``), and the error
    line names ``file``; ``phrases`` must all be in it for a run without table hashes. An edit of a
    table (not ``of_manifest``) is named as changed instead when the run has hashes;
    ``hashed_only``: the edit is of the hashes themselves."""

    what: str
    file: str
    edit: Callable[[Path], None]
    phrases: tuple[str, ...]
    run: str = "gated"
    of_manifest: bool = False
    hashed_only: bool = False

    @property
    def table(self) -> bool:
        return self.file.endswith(".parquet") and not self.of_manifest


def _channels(edit) -> Callable[[Path], None]:
    return lambda run: _table(run, "channels", edit)


def _labels(edit) -> Callable[[Path], None]:
    return lambda run: _table(run, "labels", edit)


DAMAGED = [
    # ---- values out of their range
    Damaged("an AUC edited to 7.5", "channels.parquet", _channels(_set("auc_hole", 7.5, row=3)),
            ("column 'auc_hole' holds 7.5, outside [0, 1], at row 3",)),
    Damaged("a label AUC below 0", "labels.parquet", _labels(_set("auc", -0.25)),
            ("column 'auc' holds -0.25, outside [0, 1], at row 0",)),
    Damaged("a q-value above 1", "channels.parquet", _channels(_set("q_hole", 1.5, row=5)),
            ("column 'q_hole' holds 1.5, outside [0, 1]",)),
    Damaged("a negative pixel count", "labels.parquet", _labels(_set("pixels", -5, row=2)),
            ("column 'pixels' holds -5, outside [0, inf]",)),
    Damaged("NaN where a recorded run has none", "channels.parquet", _channels(_set("mean", np.nan)),
            ("column 'mean' holds NaN, which it never does in a recorded run",)),
    Damaged("inf in a float column", "channels.parquet", _channels(_set("mean_hole", np.inf)),
            ("column 'mean_hole' holds inf, not a finite number",)),
    Damaged("a valid fraction of 1.5", "evolution.parquet",
            lambda run: _table(run, "evolution", _set("valid_fraction", 1.5)),
            ("column 'valid_fraction' holds 1.5, outside [0, 1]",), run="pconv"),
    Damaged("a negative count in a coverage histogram", "evolution.parquet",
            lambda run: _table(run, "evolution", lambda f: f.assign(coverage_hist=[
                [-1, *list(h)[1:]] for h in f.coverage_hist])),
            ("column 'coverage_hist' holds -1, outside [0, inf], at position 0 of row 0",), run="pconv"),
    # ---- rows twice, rows missing, rows of another layer or class
    Damaged("every channel row twice", "channels.parquet", _channels(lambda f: pd.concat([f, f], ignore_index=True)),
            ("repeated row(s) of (layer, channel)",)),
    Damaged("one label row twice", "labels.parquet", _labels(lambda f: pd.concat([f, f.iloc[[7]]], ignore_index=True)),
            ("1 repeated row(s) of (layer, label_id, channel)",)),
    Damaged("a channel row dropped", "channels.parquet", _channels(lambda f: f.iloc[:-1]),
            ("row(s) of layer", "but the layers table implies")),
    Damaged("a gated layer renamed in channels", "channels.parquet",
            _channels(_set("layer", "renamed", where=lambda f: f.layer == f.layer.iloc[0])),
            ("row(s) of layer 'renamed', but the layers table implies 0",)),
    Damaged("a label renamed", "labels.parquet", _labels(_set("label", "box", where=lambda f: f.label_id == 0)),
            ("label 'box' at row 0 is not class 0 of the manifest ('sky')",)),
    Damaged("a layer dropped from the layers table", "layers.parquet",
            lambda run: _table(run, "layers", lambda f: f.iloc[:-1]), ("lists the layers",)),
    # ---- columns dropped or of another type
    Damaged("a dropped column", "channels.parquet", _channels(lambda f: f.drop(columns="auc_hole")),
            ("no column(s) auc_hole",)),
    Damaged("a column of strings", "channels.parquet", _channels(lambda f: f.assign(auc_hole=f.auc_hole.astype(str))),
            ("column 'auc_hole' is ", ", not float64")),
    Damaged("numbers in a text column", "channels.parquet", _channels(lambda f: f.assign(role=1.0)),
            ("column 'role' holds other values than text",)),
    Damaged("channel ids as floats", "channels.parquet", _channels(lambda f: f.assign(channel=f.channel + 0.5)),
            ("column 'channel' is float64, not int64",)),
    Damaged("a truncated table", "labels.parquet", lambda run: _truncate(run / "labels.parquet"),
            ("unreadable table",)),
    Damaged("a table replaced by a link to another run's", "channels.parquet", _other_run_file("channels.parquet"),
            ("row(s) of layer", "but the layers table implies")),
    # ---- the manifest
    Damaged("image size [0, -5]", "manifest.json", lambda run: _manifest(run, image_size=[0, -5]),
            ("image_size is [0, -5], not [height, width] in pixels (> 0)",)),
    Damaged("n_images that is not the shards' sum", "manifest.json", lambda run: _manifest(run, n_images=12),
            ("n_images is 12 but its shards hold 6 images",)),
    Damaged("n_images as text", "manifest.json", lambda run: _manifest(run, n_images="many"),
            ("n_images is 'many', not an integer >= 0",)),
    Damaged("more samples than images", "manifest.json", lambda run: _manifest(run, samples=99),
            ("samples 99 exceeds n_images 6",)),
    Damaged("settings null", "manifest.json", lambda run: _manifest(run, settings=None),
            ("settings is not an object",)),
    Damaged("a layer named twice in the manifest", "manifest.json",
            lambda run: _manifest(run, layers=(lambda m: m + m[:1])(json.loads((run / "manifest.json").read_text())[
                "layers"])), ("layers names a layer twice",)),
    Damaged("a layer renamed in the manifest", "layers.parquet",
            lambda run: _manifest(run, layers=["renamed", *json.loads((run / "manifest.json").read_text())[
                "layers"][1:]]), ("lists the layers", "but manifest.json records ['renamed'"), of_manifest=True),
    Damaged("a class dropped from the manifest", "labels.parquet",
            lambda run: _manifest(run, data=(lambda m: m["data"] | {"classes": m["data"]["classes"][:-1]})(
                json.loads((run / "manifest.json").read_text()))), ("(one per (channel, class))",), of_manifest=True),
    Damaged("shards null", "manifest.json", lambda run: _manifest(run, shards=None),
            ("'shards' is None, not a list of the images the run recorded",)),
    Damaged("the manifest replaced by a link to another run's", "layers.parquet", _other_run_file("manifest.json"),
            (CHANGED,), of_manifest=True, hashed_only=True),
    Damaged("table hashes that are not hashes", "manifest.json", lambda run: _manifest(run, **{DIGESTS: ["x"]}),
            ("table_sha256 is not a map of table files to sha256 digests",), hashed_only=True),
    Damaged("the hash of another table", "channels.parquet",
            lambda run: _manifest(run, **{DIGESTS: json.loads((run / "manifest.json").read_text())[DIGESTS] | {
                "channels.parquet": sha256_file(run / "labels.parquet")}}), (CHANGED,), of_manifest=True,
            hashed_only=True),
]
CASES = [(case, hashed) for case in DAMAGED for hashed in (True, False) if hashed or not case.hashed_only]


def _copy_runs(recorded: Path, scratch: Path) -> Path:
    runs = scratch / "runs"
    shutil.copytree(recorded, runs, symlinks=True)
    return runs


def _without_hashes(run: Path) -> None:
    """The run as gateprobe wrote it before it kept the tables' sha256."""
    manifest = json.loads((run / "manifest.json").read_text())
    manifest.pop(DIGESTS)
    (run / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("case", "hashed"), CASES,
                         ids=[f"{c.what} ({'hashed' if h else 'recorded before hashes'})" for c, h in CASES])
def test_a_damaged_run_gets_one_line_from_every_reader(case, hashed, recorded, tmp_path, capsys):
    runs = _copy_runs(recorded, tmp_path)
    target = runs / case.run
    if not hashed:
        _without_hashes(target)
    case.edit(target)
    phrases = (CHANGED,) if hashed and case.table else case.phrases
    before = digest(runs)
    out = tmp_path / "out"
    commands = [["claims", runs / "gated", runs / "pconv"], ["report", runs / "pconv", runs / "gated", "--out",
                                                              out / "report.html"],
                ["merge", target, "--out", out / "merged"],
                ["analyze", target, "--n", "2", "--no-ablation", "--no-attribution", "--no-sketch"]]
    for argv in commands:
        capsys.readouterr()
        code = main([str(a) for a in argv])
        printed = capsys.readouterr()
        line = error_line(printed.err)
        assert code == 2 and printed.out == "", (argv[0], printed)  # no claims table, no verdict
        assert f"{target / case.file}: " in line and all(p in line for p in phrases), (argv[0], line)
    with pytest.raises(RunError) as raised:
        load_run(target)
    assert str(raised.value).startswith(f"{target / case.file}: ") and all(p in str(raised.value) for p in phrases)
    skipped = RunStore(runs).refresh().skipped
    assert case.run in skipped and all(p in skipped[case.run] for p in phrases), skipped
    assert digest(runs) == before and sorted(p.name for p in runs.iterdir()) == ["gated", "pconv"]
    assert not out.exists()


def test_the_recorded_runs_read_and_serve(recorded):
    """The control of the table above: the same runs, unedited, pass every check."""
    for name in ("gated", "pconv"):
        load_run(recorded / name)
    assert sorted(RunStore(recorded).refresh().runs) == ["gated", "pconv"]


def test_runs_recorded_before_table_hashes_still_read(recorded, tmp_path):
    runs = _copy_runs(recorded, tmp_path)
    for name in ("gated", "pconv"):
        _without_hashes(runs / name)
        old, new = load_run(runs / name), load_run(recorded / name)
        for table in TABLES:
            pd.testing.assert_frame_equal(getattr(old, table), getattr(new, table))


def test_every_table_written_by_record_and_merge_has_its_sha256_in_the_manifest(recorded, tmp_path, capsys):
    model = resolve_model(str(recorded.parent / "ckpt-gated"))
    data = f"folder:{recorded.parent / 'data'}"
    shards = [record(model, data, tmp_path / f"shard{i}", shard=(i, 2), batch_size=2, samples=1,
                     progress=False).path for i in range(2)]
    code, stderr = run_cli(["merge", *shards, "--out", tmp_path / "merged"], capsys)
    assert code == 0, stderr
    digests = {}
    for run in [*shards, tmp_path / "merged", recorded / "gated"]:
        recorded_digests = json.loads((run / "manifest.json").read_text())[DIGESTS]
        assert recorded_digests == {f"{t}.parquet": sha256_file(run / f"{t}.parquet") for t in TABLES}, run
        digests[run.name] = recorded_digests
    assert digests["merged"]["channels.parquet"] not in (digests["shard0"]["channels.parquet"],
                                                         digests["shard1"]["channels.parquet"])


def test_unchecked_reading_is_for_tables_you_wrote_yourself(recorded, tmp_path):
    """``Run(path, check=False)`` reads hand-made tables as they are; the default checks them."""
    runs = _copy_runs(recorded, tmp_path)
    _table(runs / "gated", "channels", _set("auc_hole", 7.5))
    assert Run(runs / "gated", check=False).channels.auc_hole[0] == 7.5
    with pytest.raises(RunError, match=CHANGED):
        Run(runs / "gated").channels


def test_the_table_hash_is_of_the_bytes_read(recorded, tmp_path):
    """A table rewritten with the same values but other bytes (another writer's metadata) is
    named as changed: the hash covers the file, not its values."""
    runs = _copy_runs(recorded, tmp_path)
    frame = pd.read_parquet(runs / "gated" / "layers.parquet")
    frame.to_parquet(runs / "gated" / "layers.parquet", index=False, compression="gzip")
    assert hashlib.sha256((runs / "gated" / "layers.parquet").read_bytes()).hexdigest() != json.loads(
        (recorded / "gated" / "manifest.json").read_text())[DIGESTS]["layers.parquet"]
    with pytest.raises(RunError, match=CHANGED):
        load_run(runs / "gated")
