"""Scenes, hole masks, sketches and the researcher's FolderDataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from probe.data import (CLASSES, HELDOUT_SEED, DataError, FolderDataset, Scenes, collate, dataset_from_spec,
                        heldout_items, hole_mask, parse_data)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Independent reference: a pixel is on a boundary iff its right or lower neighbour differs."""
    h, w = labels.shape
    out = np.zeros((h, w), bool)
    for i in range(h):
        for j in range(w):
            if (j + 1 < w and labels[i, j] != labels[i, j + 1]) or (i + 1 < h and labels[i, j] != labels[i + 1, j]):
                out[i, j] = True
    return out


# ----------------------------------------------------------------------------- Scenes
def test_scenes_item_types_shapes_and_ranges():
    item = Scenes(size=64, n=4, seed=0)[1]
    assert set(item) >= {"image", "hole", "sketch", "labels", "index"}
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["hole"].shape == (1, 64, 64) and item["hole"].dtype == torch.float32
    assert item["sketch"].shape == (1, 64, 64) and item["sketch"].dtype == torch.float32
    assert item["labels"].shape == (64, 64) and item["labels"].dtype == torch.int64
    assert item["index"] == 1
    assert 0 <= item["image"].min() and item["image"].max() <= 1 and item["image"].std() > 0.05
    assert set(item["hole"].unique().tolist()) == {0.0, 1.0}
    assert set(item["sketch"].unique().tolist()) <= {0.0, 1.0}
    assert 0 <= item["labels"].min() and item["labels"].max() < len(CLASSES)


def test_scenes_deterministic_in_seed_and_index():
    a, b = Scenes(size=32, n=8, seed=0), Scenes(size=32, n=8, seed=0)
    for i in (0, 5):
        for key in ("image", "hole", "sketch", "labels"):
            assert torch.equal(a[i][key], b[i][key])
    shifted = Scenes(size=32, n=4, seed=0, start=5)[0]  # item (seed 0, index 5)
    assert torch.equal(shifted["image"], a[5]["image"]) and torch.equal(shifted["hole"], a[5]["hole"])
    other = Scenes(size=32, n=8, seed=1)
    assert not torch.equal(a[0]["image"], other[0]["image"])
    assert not torch.equal(a[0]["hole"], other[0]["hole"])
    assert not torch.equal(a[0]["image"], a[1]["image"])


def test_scenes_index_range():
    data = Scenes(size=32, n=3)
    assert len(data) == 3
    with pytest.raises(IndexError):
        data[3]


def test_scenes_cover_the_classes():
    data = Scenes(size=64, n=36, seed=2)
    present = set()
    for i in range(len(data)):
        present |= set(data[i]["labels"].unique().tolist())
    assert len(present) >= 6
    assert {0, 1} <= present  # sky and grass are in every scene


@pytest.mark.parametrize("mode", ["free", "rect", "centre"])
def test_hole_fraction_within_configured_range(mode):
    lo, hi = 0.15, 0.3
    data = Scenes(size=64, n=24, seed=4, hole_mode=mode, hole_area=(lo, hi))
    fractions = np.array([data[i]["hole"].mean().item() for i in range(len(data))])
    tolerance = 0.0 if mode == "free" else 0.03  # rect/centre round their sides to whole pixels
    inside = (fractions >= lo - tolerance) & (fractions <= hi + tolerance)
    assert inside.mean() >= 0.8, fractions
    assert fractions.std() > 0  # the hole size varies


def test_hole_modes_have_their_shapes():
    rng = np.random.default_rng(0)
    for _ in range(5):
        rect = hole_mask(rng, 64, mode="rect")
        rows, cols = np.where(rect.any(1))[0], np.where(rect.any(0))[0]
        assert rect[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()  # its bounding box is full
        assert rect.sum() == len(rows) * len(cols)
        centre = hole_mask(rng, 64, mode="centre")
        rows, cols = np.where(centre.any(1))[0], np.where(centre.any(0))[0]
        assert len(rows) == len(cols) and centre.sum() == len(rows) ** 2  # a full square
        assert rows[0] == (64 - len(rows)) // 2 == cols[0]  # centred
        free = hole_mask(rng, 64, mode="free")
        assert free.dtype == bool and 0.1 <= free.mean() <= 0.35


def test_hole_mask_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown hole mode 'blob'"):
        hole_mask(rng, 32, mode="blob")
    with pytest.raises(ValueError, match="hole area range"):
        hole_mask(rng, 32, area=(0.5, 0.2))
    with pytest.raises(ValueError, match="unknown hole mode"):
        Scenes(size=32, n=2, hole_mode="blob")[0]


def test_sketch_is_label_boundaries_inside_the_hole():
    data = Scenes(size=32, n=12, seed=6)
    drawn = 0
    for i in range(len(data)):
        item = data[i]
        sketch, hole = item["sketch"][0].numpy() > 0, item["hole"][0].numpy() > 0
        expected = boundaries(item["labels"].numpy()) & hole
        np.testing.assert_array_equal(sketch, expected)
        assert not (sketch & ~hole).any()
        drawn += sketch.sum()
    assert drawn > 0


@pytest.mark.parametrize("size", [32, 128])
def test_scenes_sizes(size):
    item = Scenes(size=size, n=1)[0]
    assert item["image"].shape == (3, size, size) and item["labels"].shape == (size, size)


@pytest.mark.parametrize("size", [16, 300])
def test_scenes_bad_sizes(size):
    with pytest.raises(ValueError, match="between 32 and 256"):
        Scenes(size=size)


def test_heldout_items():
    items = heldout_items(3, size=32)
    assert len(items) == 3
    reference = Scenes(size=32, n=3, seed=HELDOUT_SEED)
    for i, item in enumerate(items):
        assert item["image"].shape == (3, 32, 32) and item["hole"].shape == (1, 32, 32)
        assert item["sketch"].shape == (1, 32, 32) and item["labels"].shape == (32, 32)
        assert torch.equal(item["image"], reference[i]["image"])
    train = Scenes(size=32, n=3, seed=0)
    assert not torch.equal(items[0]["image"], train[0]["image"])


def test_collate_and_spec_round_trip():
    data = Scenes(size=32, n=4, seed=3, hole_mode="rect", hole_area=(0.2, 0.3), start=2)
    batch = collate([data[0], data[1]])
    assert batch["image"].shape == (2, 3, 32, 32) and batch["hole"].shape == (2, 1, 32, 32)
    assert batch["labels"].shape == (2, 32, 32) and batch["index"].tolist() == [2, 3]
    rebuilt = dataset_from_spec(data.spec())
    assert len(rebuilt) == 4
    assert torch.equal(rebuilt[1]["image"], data[1]["image"]) and torch.equal(rebuilt[1]["hole"], data[1]["hole"])
    assert data.spec()["classes"] == list(CLASSES)


# ----------------------------------------------------------------------------- FolderDataset
SIZE = 24


def _labels(seed: int) -> np.ndarray:
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[SIZE // 2:] = 1
    labels[4:10, 4 + seed:12 + seed] = 2
    return labels


def make_folder(root, names=("a", "b", "c"), masks=("b",), classes="sky\ngrass\nbox\n"):
    """A tiny dataset: RGB images, label maps, a mask for some names and classes.txt."""
    rng = np.random.default_rng(0)
    for sub in ("images", "labels", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    pixels = {}
    for k, name in enumerate(names):
        rgb = rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{name}.png")
        Image.fromarray(_labels(k)).save(root / "labels" / f"{name}.png")
        pixels[name] = rgb
    for name in masks:
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[6:18, 2:20] = 255
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return pixels


def test_folder_dataset_items(tmp_path):
    pixels = make_folder(tmp_path)
    data = FolderDataset(tmp_path, seed=3)
    assert len(data) == 3 and data.classes == ("sky", "grass", "box")
    for i, name in enumerate(["a", "b", "c"]):
        item = data[i]
        assert item["name"] == name and item["index"] == i
        assert item["image"].shape == (3, SIZE, SIZE) and item["image"].dtype == torch.float32
        np.testing.assert_allclose(item["image"].numpy(), pixels[name].transpose(2, 0, 1) / 255.0, atol=1e-6)
        assert torch.equal(item["labels"], torch.from_numpy(_labels(i).astype(np.int64)))
        hole = item["hole"][0].numpy() > 0
        assert set(item["hole"].unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal(item["sketch"][0].numpy() > 0, boundaries(_labels(i)) & hole)
    given = np.zeros((SIZE, SIZE))
    given[6:18, 2:20] = 1
    np.testing.assert_array_equal(data[1]["hole"][0].numpy(), given)  # the mask file is used
    generated = data[0]["hole"].mean().item()
    assert 0.05 < generated < 0.5  # a generated hole
    assert torch.equal(FolderDataset(tmp_path, seed=3)[0]["hole"], data[0]["hole"])  # seeded
    assert not torch.equal(FolderDataset(tmp_path, seed=4)[0]["hole"], data[0]["hole"])
    spec = data.spec()
    assert spec["kind"] == "folder" and spec["n"] == 3 and spec["classes"] == ["sky", "grass", "box"]
    assert torch.equal(dataset_from_spec(spec)[0]["hole"], data[0]["hole"])


def test_folder_dataset_mask_threshold(tmp_path):
    make_folder(tmp_path, names=("a",), masks=())
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, :8] = 100
    mask[:, 8:16] = 200
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    hole = FolderDataset(tmp_path)[0]["hole"][0]
    assert hole[:, :8].sum() == 0 and hole[:, 8:16].min() == 1 and hole[:, 16:].sum() == 0
    hole = FolderDataset(tmp_path, mask_threshold=0.3)[0]["hole"][0]
    assert hole[:, :16].min() == 1 and hole[:, 16:].sum() == 0


@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "JPEG"])
def test_folder_dataset_image_modes_load_as_rgb_floats(tmp_path, mode):
    make_folder(tmp_path, names=("a",), masks=())
    rng = np.random.default_rng(1)
    path = tmp_path / "images" / "a.png"
    if mode == "L":
        gray = rng.integers(0, 256, size=(SIZE, SIZE), dtype=np.uint8)
        Image.fromarray(gray).save(path)
        expected = np.repeat(gray[None] / 255.0, 3, 0)
    elif mode == "RGBA":
        rgba = rng.integers(0, 256, size=(SIZE, SIZE, 4), dtype=np.uint8)
        Image.fromarray(rgba).save(path)
        expected = rgba[..., :3].transpose(2, 0, 1) / 255.0
    elif mode == "I;16":
        gray = rng.integers(0, 65536, size=(SIZE, SIZE), dtype=np.uint16)
        Image.fromarray(gray).save(path)
        assert Image.open(path).mode.startswith("I")
        expected = np.repeat(gray[None] / 65535.0, 3, 0)
    elif mode == "P":  # palette image: must give its colours, not its palette indices
        rgb = np.zeros((SIZE, SIZE, 3), np.uint8)
        rgb[: SIZE // 2] = (200, 30, 40)
        rgb[SIZE // 2:] = (10, 90, 250)
        Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(path)
        assert Image.open(path).mode == "P"
        expected = rgb.transpose(2, 0, 1) / 255.0
    else:  # JPEG, lossy: compare loosely
        path.unlink()
        rgb = np.full((SIZE, SIZE, 3), (30, 160, 220), np.uint8)
        Image.fromarray(rgb).save(tmp_path / "images" / "a.jpg", quality=95)
        expected = rgb.transpose(2, 0, 1) / 255.0
    image = FolderDataset(tmp_path)[0]["image"]
    assert image.shape == (3, SIZE, SIZE) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    np.testing.assert_allclose(image.numpy(), expected, atol=0.02 if mode == "JPEG" else 1e-6)


def test_folder_dataset_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        FolderDataset(tmp_path / "nowhere")


def test_folder_dataset_missing_classes(tmp_path):
    make_folder(tmp_path, classes=None)
    with pytest.raises(DataError, match=r"classes\.txt: missing; write one class name per line"):
        FolderDataset(tmp_path)


def test_folder_dataset_empty_classes(tmp_path):
    make_folder(tmp_path, classes="\n  \n")
    with pytest.raises(DataError, match="no class names"):
        FolderDataset(tmp_path)


def test_folder_dataset_no_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "classes.txt").write_text("sky\n")
    with pytest.raises(DataError, match="no .png/.jpg images"):
        FolderDataset(tmp_path)


def test_folder_dataset_image_without_label(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "labels" / "b.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) without a label map, e.g. .*labels/b.png is missing"):
        FolderDataset(tmp_path)


def test_folder_dataset_label_size_mismatch(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((SIZE, SIZE + 2), np.uint8)).save(tmp_path / "labels" / "a.png")
    data = FolderDataset(tmp_path)
    with pytest.raises(DataError, match=f"label map is {SIZE + 2}x{SIZE} but the image is {SIZE}x{SIZE}"):
        data[0]
    data[1]  # the other items are fine


def test_folder_dataset_mask_size_mismatch(tmp_path):
    make_folder(tmp_path)
    Image.fromarray(np.zeros((SIZE - 1, SIZE), np.uint8)).save(tmp_path / "masks" / "b.png")
    with pytest.raises(DataError, match="mask is .* they must match"):
        FolderDataset(tmp_path)[1]


def test_folder_dataset_label_outside_classes(tmp_path):
    make_folder(tmp_path, classes="sky\ngrass\n")  # the label maps use id 2
    with pytest.raises(DataError, match=r"label value 2 is neither a class nor ignored; add its name to classes.txt \(2 classes\)"):
        FolderDataset(tmp_path)[0]


def test_folder_dataset_corrupt_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "images" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    data = FolderDataset(tmp_path)
    with pytest.raises(DataError, match="c.png: not a readable image"):
        data[2]


def test_folder_dataset_non_square_without_mask(tmp_path):
    """A non-square image without a mask gets a generated hole of its own shape."""
    make_folder(tmp_path, names=("a",), masks=())
    Image.fromarray(np.zeros((SIZE, SIZE + 8, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((SIZE, SIZE + 8), np.uint8)).save(tmp_path / "labels" / "a.png")
    hole = FolderDataset(tmp_path)[0]["hole"]
    assert hole.shape == (1, SIZE, SIZE + 8) and 0.05 < hole.mean().item() < 0.5


def test_data_errors_are_value_errors():
    assert issubclass(DataError, ValueError)


# ----------------------------------------------------------------------------- parse_data
def test_parse_data_scenes():
    data = parse_data("scenes:32", n=5)
    assert isinstance(data, Scenes) and data.size == 32 and len(data) == 5 and data.seed == HELDOUT_SEED
    assert parse_data("scenes").size == 64
    assert parse_data("scenes:32", seed=0).seed == 0


def test_parse_data_folder(tmp_path):
    make_folder(tmp_path)
    data = parse_data(f"folder:{tmp_path}")
    assert isinstance(data, FolderDataset) and len(data) == 3


@pytest.mark.parametrize("text,message", [("imagenet", "use scenes, scenes:SIZE"), ("folder:", "use scenes"),
                                          ("scenes:big", "must be an integer")])
def test_parse_data_errors(text, message):
    with pytest.raises(DataError, match=message):
        parse_data(text)


def test_parse_data_scenes_bad_size():
    with pytest.raises(ValueError, match="between 32 and 256"):
        parse_data("scenes:16")


def test_shape_only_scenes_differ_from_scenes_only_inside_the_objects():
    from probe.data import dataset_from_spec, parse_data

    plain, shapes = parse_data("scenes:48", n=6), parse_data("scenes:48:shapes", n=6)
    assert shapes.spec()["shape_only"] is True and "shape_only" not in plain.spec()
    objects = 0
    for i in range(6):
        a, b = plain[i], shapes[i]
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["hole"], b["hole"])
        disc = (a["labels"] == 5)
        outside = ~disc.unsqueeze(0).expand_as(a["image"])
        assert torch.equal(a["image"][outside], b["image"][outside])  # only discs change texture
        objects += int(disc.any())
    assert objects > 0
    rebuilt = dataset_from_spec(shapes.spec())
    assert torch.equal(rebuilt[2]["image"], shapes[2]["image"])
