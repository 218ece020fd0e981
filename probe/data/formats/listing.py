"""Pairing image files with their label maps."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import DataError


def stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Stem -> file of ``folder``'s files with one of ``suffixes`` (any case); two files of one stem
    (``a.png`` beside ``a.jpg``) are refused, naming both."""
    found: dict[str, Path] = {}
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DataError(f"{found[path.stem]} and {path.name}: two images named {path.stem!r}; keep one of them")
        found[path.stem] = path
    return found


def paired(images: Path, suffixes: tuple[str, ...], labels: Path,
           label_name: Callable[[str], str]) -> list[tuple[str, Path, Path]]:
    """``(name, image, label)`` for every image in ``images``, its label ``labels / label_name(name)``;
    an image without its label map is refused."""
    if not images.is_dir():
        raise DataError(f"{images}: no such folder; check ROOT and --split")
    entries = [(name, path, labels / label_name(name)) for name, path in stems(images, suffixes).items()]
    missing = [label for _, _, label in entries if not label.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) without a label map, e.g. {missing[0]} is missing; add the "
                        "label maps or remove those images")
    return entries
