"""The standard segmentation formats on tiny datasets written here in each official layout, with
known answers: class names, per-class pixel counts after resize and crop (computed independently
with PIL), ignore ids excluded, and the ignore convention of the label statistics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data import DataError, FolderDataset, collate, dataset_from_spec, parse_data
from probe.data.formats import ADE20K, Cityscapes, COCOStuff, VOCSegmentation
from probe.data.formats.transform import fit_image
from probe.data.formats.voc import VOC_CLASSES, voc_colormap
from probe.recording.context import BatchContext
from probe.stats.layer_stats import GatedLayerStats, LayerGeometry

SHAPES = [(30, 44), (40, 26)]  # (H, W) of the two images: non-square, different sizes
S = 16


def stored_labels(shape, values, border_value=None, seed=0) -> np.ndarray:
    """``[H, W]`` uint8: vertical bands of ``values``, a one-pixel border of ``border_value``."""
    h, w = shape
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, w), len(values) - 1, replace=False))
    labels = np.zeros(shape, np.uint8)
    for value, lo, hi in zip(values, [0, *cuts], [*cuts, w]):
        labels[:, lo:hi] = value
    labels[h // 3: h // 3 + 4, w // 4: w // 4 + 5] = values[-1]  # a block, so rows differ too
    if border_value is not None:
        labels[[0, -1]] = labels[:, [0, -1]] = border_value
    return labels


def write_rgb(path, shape, seed=0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def save(path, array, palette=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if palette is not None:
        image = image.convert("P")
        image.putpalette(palette)
    image.save(path)


def reference_counts(stored: np.ndarray, mapping: dict, n_classes: int, size: int | None = S) -> np.ndarray:
    """Independent answer: PIL NEAREST resize of the stored map (shorter side to ``size``), centre
    crop, then ``mapping`` (stored value -> class id; absent = ignored); per-class pixel counts."""
    if size is not None:
        h, w = stored.shape
        rh, rw = (size, round(w * size / h)) if h <= w else (round(h * size / w), size)
        resized = np.asarray(Image.fromarray(stored).resize((rw, rh), Image.NEAREST))
        top, left = (rh - size) // 2, (rw - size) // 2
        stored = resized[top:top + size, left:left + size]
    ids = np.array([mapping.get(int(v), -1) for v in stored.ravel()])
    return np.bincount(ids[ids >= 0], minlength=n_classes)


def item_counts(item, n_classes) -> np.ndarray:
    labels = item["labels"].numpy().ravel()
    return np.bincount(labels[labels >= 0], minlength=n_classes)


def check_counts(data, stored: list[np.ndarray], mapping: dict, size: int | None = S) -> None:
    for i, raw in enumerate(stored):
        item = data[i]
        if size is not None:
            assert item["image"].shape == (3, size, size) and item["labels"].shape == (size, size)
        np.testing.assert_array_equal(item_counts(item, len(data.classes)),
                                      reference_counts(raw, mapping, len(data.classes), size))
        assert int(item["labels"].min()) >= -1


# ----------------------------------------------------------------------------- the four layouts
def make_voc(root, names=("2007_000032", "2007_000033")):
    stored = []
    palette = [int(c) for c in voc_colormap().ravel()]
    for k, (name, shape) in enumerate(zip(names, SHAPES)):
        write_rgb(root / "JPEGImages" / f"{name}.jpg", shape, k)
        labels = stored_labels(shape, [0, 15, 20], border_value=255, seed=k)
        save(root / "SegmentationClass" / f"{name}.png", labels, palette)
        stored.append(labels)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("\n".join(names) + "\n")
    (sets / "train.txt").write_text(names[0] + "\n")
    return stored


def test_voc_palette_classes_void_ignored(tmp_path):
    stored = make_voc(tmp_path)
    assert Image.open(tmp_path / "SegmentationClass" / "2007_000032.png").mode == "P"
    data = VOCSegmentation(tmp_path, size=S)
    assert data.split == "val" and len(data) == 2 and data.classes == VOC_CLASSES
    assert data.classes[15] == "person" and data.classes[20] == "tvmonitor"
    check_counts(data, stored, {i: i for i in range(21)})
    assert (data[0]["labels"] == -1).any()  # the void border survives the resize as ignore
    assert len(VOCSegmentation(tmp_path, split="train")) == 1
    spec = data.spec()
    assert spec["ignore"] == [255] and spec["classes"] == list(VOC_CLASSES)
    assert spec["transform"]["resize_shorter_side"] == S


def test_voc_rgb_label_maps_read_through_the_colormap(tmp_path):
    stored = make_voc(tmp_path)
    path = tmp_path / "SegmentationClass" / "2007_000032.png"
    Image.open(path).convert("RGB").save(path)
    data = VOCSegmentation(tmp_path)
    np.testing.assert_array_equal(data[0]["labels"].numpy(), np.where(stored[0] == 255, -1, stored[0].astype(np.int64)))


def test_voc_missing_listed_file(tmp_path):
    make_voc(tmp_path)
    (tmp_path / "JPEGImages" / "2007_000033.jpg").unlink()
    with pytest.raises(DataError, match="2007_000033.jpg: missing but listed in .*val.txt"):
        VOCSegmentation(tmp_path)


def make_ade(root, split="validation"):
    (root / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n1,0.15,11664,1172,wall\n"
                                            "2,0.10,6046,612,building;edifice\n3,0.09,8265,796,sky\n")
    stored = []
    for k, shape in enumerate(SHAPES):
        name = f"ADE_val_0000000{k + 1}"
        write_rgb(root / "images" / split / f"{name}.jpg", shape, k)
        labels = stored_labels(shape, [0, 1, 2, 3], seed=k)
        save(root / "annotations" / split / f"{name}.png", labels)
        stored.append(labels)
    return stored


def test_ade20k_names_and_other_ignored(tmp_path):
    stored = make_ade(tmp_path)
    data = ADE20K(tmp_path, size=S)
    assert data.split == "validation" and data.classes == ("wall", "building", "sky")
    check_counts(data, stored, {1: 0, 2: 1, 3: 2})
    assert data.spec()["ignore"] == [0]
    save(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png", np.full(SHAPES[0], 4, np.uint8))
    with pytest.raises(DataError, match="label value 4 is neither a class nor ignored; ADE20K annotations hold"):
        data[0]


def make_cityscapes(root, split="val"):
    stored = {}
    cities = {"frankfurt": "labelIds", "lindau": "labelTrainIds"}
    for k, ((city, kind), shape) in enumerate(zip(cities.items(), SHAPES)):
        name = f"{city}_000000_000019"
        write_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", shape, k)
        gt = root / "gtFine" / split / city
        label_ids = stored_labels(shape, [7, 26, 4, 50], border_value=0, seed=k)  # road, car, static, none
        save(gt / f"{name}_gtFine_labelIds.png", label_ids)
        if kind == "labelTrainIds":
            train_ids = stored_labels(shape, [0, 13, 18], border_value=255, seed=k + 5)
            save(gt / f"{name}_gtFine_labelTrainIds.png", train_ids)
            stored[city] = (train_ids, {i: i for i in range(19)})
        else:
            stored[city] = (label_ids, {7: 0, 26: 13})
    return stored


def test_cityscapes_train_ids_or_mapped_label_ids(tmp_path):
    stored = make_cityscapes(tmp_path)
    data = Cityscapes(tmp_path, size=S)
    assert data.names == ["frankfurt_000000_000019", "lindau_000000_000019"]
    assert len(data.classes) == 19 and data.classes[13] == "car" and data.classes[18] == "bicycle"
    for i, (raw, mapping) in enumerate(stored.values()):  # labelIds for frankfurt, trainIds preferred for lindau
        np.testing.assert_array_equal(item_counts(data[i], 19), reference_counts(raw, mapping, 19))
    ignore = data.spec()["ignore"]
    assert {0, 4, 50, 255} <= set(ignore) and not {7, 26} & set(ignore)


def make_coco(root, split="val2017"):
    (root / "labels.txt").write_text("0: unlabeled\n1: person\n2: bicycle\n3: car\n")
    stored = []
    for k, shape in enumerate(SHAPES):
        name = f"00000000013{k}"
        write_rgb(root / "images" / split / f"{name}.jpg", shape, k)
        labels = stored_labels(shape, [0, 1, 2], border_value=255, seed=k)  # value = class id - 1
        save(root / "stuffthingmaps_trainval2017" / split / f"{name}.png", labels)
        stored.append(labels)
    return stored


def test_cocostuff_names_and_unlabeled_ignored(tmp_path):
    stored = make_coco(tmp_path)
    data = COCOStuff(tmp_path, size=S)
    assert data.split == "val2017" and data.classes == ("person", "bicycle", "car")
    check_counts(data, stored, {0: 0, 1: 1, 2: 2})
    assert data.spec()["ignore"] == [255]


MAKERS = {"voc": make_voc, "ade20k": make_ade, "cityscapes": make_cityscapes, "cocostuff": make_coco}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_parse_data_and_spec_round_trip(tmp_path, kind):
    MAKERS[kind](tmp_path)
    data = parse_data(f"{kind}:{tmp_path}", size=S, seed=3)
    assert data.kind == kind and len(data) == 2
    spec = json.loads(json.dumps(data.spec()))  # what the manifest holds
    again = dataset_from_spec(spec)
    for key in ("image", "hole", "sketch", "labels"):
        assert torch.equal(again[1][key], data[1][key])
    batch = collate([data[0], data[1]])  # one size after --size
    assert batch["labels"].shape == (2, S, S)


@pytest.mark.parametrize("kwargs,message", [
    ({"split": "val"}, "--split applies to the standard datasets"), ({"size": 3}, "--size 3: expected an integer"),
    ({"holes": "box:2"}, "box fraction must be"), ({"holes_invert": True}, "--holes-invert applies to"),
])
def test_parse_data_image_option_errors(tmp_path, kwargs, message):
    make_folder(tmp_path)
    with pytest.raises(DataError, match=message):
        parse_data(f"folder:{tmp_path}", **kwargs)


def test_parse_data_refuses_image_options_for_scenes_and_unknown_formats(tmp_path):
    with pytest.raises(DataError, match="--size applies to image folders"):
        parse_data("scenes:32", size=32)
    with pytest.raises(DataError, match="voc:ROOT, ade20k:ROOT, cityscapes:ROOT, cocostuff:ROOT"):
        parse_data(f"pascal:{tmp_path}")


# ----------------------------------------------------------------------------- folder
def make_folder(root, shapes=SHAPES):
    """images/, labels/ with ids 0-2 and a border of 9, classes.txt (3 names), ignore.txt (9)."""
    root.mkdir(exist_ok=True)
    (root / "classes.txt").write_text("sky\ngrass\nbox\n")
    (root / "ignore.txt").write_text("9\n")
    stored = []
    for k, shape in enumerate(shapes):
        write_rgb(root / "images" / f"im{k}.png", shape, k)
        labels = stored_labels(shape, [0, 1, 2], border_value=9, seed=k)
        save(root / "labels" / f"im{k}.png", labels)
        stored.append(labels)
    return stored


def test_folder_sizes_ignore_txt_and_duplicate_stems(tmp_path):
    stored = make_folder(tmp_path)
    (tmp_path / "ignore.txt").unlink()
    with pytest.raises(DataError, match="label value 9 is neither a class nor ignored; .*ignore.txt"):
        FolderDataset(tmp_path)[0]
    (tmp_path / "ignore.txt").write_text("9\n")
    mixed = FolderDataset(tmp_path)
    check_counts(mixed, stored, {0: 0, 1: 1, 2: 2}, size=None)
    assert mixed[0]["hole"].shape == (1, *SHAPES[0])  # generated for a non-square image
    with pytest.raises(DataError, match="different sizes .* pass --size S"):
        collate([mixed[0], mixed[1]])
    data = FolderDataset(tmp_path, size=S)
    check_counts(data, stored, {0: 0, 1: 1, 2: 2})
    assert data.spec()["ignore"] == [9]
    write_rgb(tmp_path / "images" / "im0.jpg", SHAPES[0])
    with pytest.raises(DataError, match=r"im0.jpg and im0.png: two images named 'im0'; keep one"):
        FolderDataset(tmp_path)


def test_folder_colour_label_maps_need_colors_txt(tmp_path):
    stored = make_folder(tmp_path, shapes=[(20, 20)])
    colours = np.array([(0, 0, 255), (0, 200, 0), (120, 60, 0)] + [(0, 0, 0)] * 6 + [(255, 255, 255)], np.uint8)
    save(tmp_path / "labels" / "im0.png", colours[stored[0]])
    with pytest.raises(DataError, match="an RGB colour label map; .* colors.txt"):
        FolderDataset(tmp_path)[0]
    (tmp_path / "colors.txt").write_text("".join(f"{r} {g} {b}\n" for r, g, b in colours[[0, 1, 2]]) + "7 7 7\n" * 6
                                         + "255 255 255\n")
    labels = FolderDataset(tmp_path)[0]["labels"].numpy()
    np.testing.assert_array_equal(labels, np.where(stored[0] == 9, -1, stored[0].astype(np.int64)))


def test_folder_masks_resize_with_the_labels(tmp_path):
    make_folder(tmp_path, shapes=[(30, 44)])
    mask = np.zeros((30, 44), np.uint8)
    mask[:, 22:] = 255  # the right half
    save(tmp_path / "masks" / "im0.png", mask)
    hole = FolderDataset(tmp_path, size=S)[0]["hole"][0].numpy()
    assert hole[:, S // 2:].all() and not hole[:, : S // 2].any()


# ----------------------------------------------------------------------------- holes and sketches
def test_hole_and_sketch_sources(tmp_path):
    make_folder(tmp_path / "data")
    box = FolderDataset(tmp_path / "data", size=S, holes="box:0.25")[0]["hole"]
    assert abs(box.mean().item() - 0.25) < 0.05
    masks = tmp_path / "masks"
    for k, column in enumerate((4, 8, 12)):
        mask = np.zeros((64, 64), np.uint8)
        mask[:, : column * 4] = 255
        save(masks / f"{k:05d}.png", mask)
    data = FolderDataset(tmp_path / "data", size=S, holes=f"folder:{masks}")
    assert data[0]["hole"][0].sum(0).tolist() == [S] * 4 + [0] * 12  # image i gets mask i
    inverted = FolderDataset(tmp_path / "data", size=S, holes=f"folder:{masks}", holes_invert=True)
    assert torch.equal(inverted[1]["hole"], 1 - data[1]["hole"])
    sketches = tmp_path / "sketches"
    for k, shape in enumerate(SHAPES):
        save(sketches / f"im{k}.png", np.full(shape, 255, np.uint8))
    drawn = FolderDataset(tmp_path / "data", size=S, sketches=f"folder:{sketches}")[0]
    assert torch.equal(drawn["sketch"], drawn["hole"])  # a full sketch, kept inside the hole
    assert dataset_from_spec(json.loads(json.dumps(data.spec())))[1]["hole"].equal(data[1]["hole"])


def test_fit_image_matches_pil_antialiased_bilinear():
    """8-bit RGB (uint8 path) and 16-bit gray (float path) against PIL's antialiased BILINEAR."""
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(rgb).resize((round(53 * S / 37), S), Image.BILINEAR), np.float32) / 255
    left = (pil.shape[1] - S) // 2
    np.testing.assert_allclose(fit_image(rgb, S, "a.png"), pil[:, left:left + S], atol=2 / 255)
    gray = np.asarray(Image.fromarray(rgb[..., 0]).resize((round(53 * S / 37), S), Image.BILINEAR), np.float32)
    ours = fit_image(rgb[..., 0].astype(np.uint16) * 257, S, "b.png")  # 16-bit gray: the float path
    np.testing.assert_allclose(ours, np.repeat(gray[:, left:left + S, None] / 255, 3, 2), atol=2 / 255)


# ----------------------------------------------------------------------------- ignore in the statistics
def test_ignored_pixels_change_no_label_statistic():
    """Known answer: label histograms and sums count exactly the kept cells; an ignored cell's
    gate changes no label count, while the region statistics count every cell."""
    site = LayerGeometry("layer", "gated", channels=2)
    h = w = 4
    labels = torch.tensor([[0, 0, 1, 1], [0, -1, -1, 1], [2, 2, -1, 1], [2, 2, 2, -1]]).view(1, h, w)
    hole = torch.zeros(1, 1, h, w)
    hole[..., :2, :2] = 1
    logits = torch.linspace(-3, 3, 2 * h * w).view(1, 2, h, w)

    def record(logits):
        stats = GatedLayerStats(site, n_labels=3, bins=16, groups=1, lo=-4.0, hi=4.0)
        ctx = BatchContext(hole, None, labels, torch.zeros(1, dtype=torch.long), n_labels=3)
        stats.add(logits, torch.sigmoid(logits), ctx)
        return stats

    stats = record(logits)
    kept = labels[0] >= 0
    gates = torch.sigmoid(logits[0])
    assert stats.labels.pixels_[0].tolist() == [3, 4, 5]  # 4 of the 16 cells ignored
    assert int(stats.labels.counts_.sum()) == 2 * int(kept.sum())
    for label in range(3):
        np.testing.assert_allclose(stats.labels.sums_[0, label].numpy(),
                                   gates[:, labels[0] == label].sum(1).double().numpy(), rtol=1e-6)
    assert int(stats.regions.pixels_.sum()) == h * w and int(stats.regions.counts_.sum()) == 2 * h * w
    moved = logits.clone()
    moved[:, :, ~kept] = 3.9  # other gates at the ignored cells only
    again = record(moved)
    assert torch.equal(again.labels.counts_, stats.labels.counts_)
    assert torch.equal(again.labels.pixels_, stats.labels.pixels_)
    torch.testing.assert_close(again.labels.sums_, stats.labels.sums_)
    assert not torch.equal(again.regions.counts_, stats.regions.counts_)


# ----------------------------------------------------------------------------- the command line
def test_cli_record_voc_with_size_excludes_void(tmp_path, capsys):
    """``record --data voc:ROOT --split val --size 32``: the VOC classes, void in no label pixel count
    at any layer (counted independently at each layer's resolution), and the manifest says so."""
    import probe
    from probe.cli import main

    make_voc(tmp_path / "voc")
    out = tmp_path / "run"
    assert main(["record", "--model", "gated-scenes", "--random-init", "--data", f"voc:{tmp_path / 'voc'}",
                 "--split", "val", "--size", "32", "--out", str(out), "--samples", "1"]) == 0
    run = probe.load_run(out)
    assert run.classes == list(VOC_CLASSES) and run.manifest["data"]["ignore"] == [255]
    assert run.manifest["data"]["transform"]["centre_crop"] == [32, 32]
    labels = torch.stack([item["labels"] for item in VOCSegmentation(tmp_path / "voc", size=32)])
    for layer in run.layers.itertuples():
        if layer.kind != "gated":
            continue
        ys = ((np.arange(layer.height) + 0.5) * 32 / layer.height).astype(int)
        xs = ((np.arange(layer.width) + 0.5) * 32 / layer.width).astype(int)
        cells = labels[:, ys][:, :, xs].numpy().ravel()
        expected = np.bincount(cells[cells >= 0], minlength=21)
        rows = run.labels[(run.labels.layer == layer.layer) & (run.labels.channel == 0)].sort_values("label_id")
        np.testing.assert_array_equal(rows.pixels.to_numpy(), expected)
    capsys.readouterr()
    assert main(["record", "--model", "gated-scenes", "--random-init", "--data", f"voc:{tmp_path / 'voc'}",
                 "--out", str(tmp_path / "mixed")]) == 2  # two image sizes without --size
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("gateprobe record: error: images of different sizes") and "--size" in last
    assert not (tmp_path / "mixed" / "labels.parquet").exists()
