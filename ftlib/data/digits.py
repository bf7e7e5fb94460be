"""scikit-learn's bundled digits as an image folder: a real image dataset that needs no download.

    from ftlib.data.digits import export_digits
    root = export_digits()          # ~/.cache/ftlib/sklearn-digits-32px/{train,test}/<digit>/<index>.png

The recipes take it by name: ``--image_folder sklearn-digits`` (see ``ftlib.data.image.resolve_image_folder``).
The 1,797 8x8 grayscale scans (values 0-16) are scaled to 0-255, upscaled with bicubic interpolation and
written as grayscale PNGs, split once (seeded, stratified) into train (80%) and test (20%); a recipe carves
its validation split out of train as for any folder without one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ftlib.core.cache import build_once, cache_root

DEFAULT_SIZE = 32
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def export_digits(root: str | Path | None = None, size: int = DEFAULT_SIZE) -> Path:
    """Write the digits as ``root/{train,test}/<digit>/<index>.png`` (``size`` x ``size``) once; return ``root``.

    An existing complete export is reused. The folder is written under a temporary name beside ``root`` and renamed
    into place (:func:`ftlib.core.cache.build_once`), so concurrent callers and a killed export never leave a
    half-written folder that passes as complete.
    """
    root = Path(root) if root is not None else cache_root() / f"sklearn-digits-{size}px"
    return build_once(root, lambda folder: _write_digits(folder, size), _is_exported)


def _is_exported(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _write_digits(root: Path, size: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    indices = np.arange(len(pixels))
    train_idx, test_idx = train_test_split(
        indices, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target
    )
    for split, chosen in (("train", train_idx), ("test", test_idx)):
        for i in sorted(chosen):
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(pixels[i]).resize((size, size), Image.Resampling.BICUBIC)
            image.save(folder / f"{i:04d}.png")
