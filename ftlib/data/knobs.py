"""Augmentation presets and knobs: names, values and their validation, without torch or torchvision.

:class:`ftlib.tasks.image_classification.ImageDataArguments` checks ``--augmentation`` / ``--augmentation_knobs`` with
:func:`check_knobs` when the arguments are parsed; :mod:`ftlib.data.image` builds the transforms from them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"crop_scale": (0.08, 1.0), "hflip": 0.5},
    "standard": {"crop_scale": (0.08, 1.0), "hflip": 0.5, "rotation": 15.0, "color_jitter": 0.2},
    "strong": {"crop_scale": (0.08, 1.0), "hflip": 0.5, "rotation": 15.0, "color_jitter": 0.2,
               "auto_augment": "trivial", "erasing": 0.25},
}
# Every knob with its "off" value. crop_scale=None means the deterministic eval resize + centre crop.
KNOBS: dict[str, Any] = {
    "crop_scale": None,          # RandomResizedCrop area range, e.g. (0.08, 1.0)
    "crop_ratio": (3 / 4, 4 / 3),  # RandomResizedCrop aspect range
    "hflip": 0.0,                # horizontal flip probability
    "vflip": 0.0,                # vertical flip probability (aerial, medical)
    "rotation": 0.0,             # max degrees of random rotation
    "color_jitter": 0.0,         # brightness=contrast=saturation strength, or a (b, c, s, hue) tuple
    "auto_augment": None,        # "trivial" (TrivialAugmentWide) | "rand" (RandAugment) | None
    "rand_magnitude": 9,         # RandAugment magnitude (0-30)
    "erasing": 0.0,              # RandomErasing probability, applied after normalisation
    "crop_pct": None,            # eval: resize shorter side to size/crop_pct, then centre crop
}
AUTO_AUGMENTS = ("trivial", "rand")


def check_knobs(preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every knob's value: the preset's over the defaults, `overrides` over both; unknown names are errors."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown augmentation preset {preset!r}; valid presets: {list(PRESETS)}")
    unknown = sorted(set(overrides) - set(KNOBS))
    if unknown:
        raise ValueError(f"Unknown augmentation knob(s) {unknown}; valid knobs: {list(KNOBS)}")
    knobs = {**KNOBS, **PRESETS[preset], **overrides}
    for name in ("hflip", "vflip", "erasing"):
        if not 0.0 <= float(knobs[name]) <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {knobs[name]}")
    if knobs["auto_augment"] in ("none", ""):
        knobs["auto_augment"] = None
    if knobs["auto_augment"] is not None and knobs["auto_augment"] not in AUTO_AUGMENTS:
        raise ValueError(f"Unknown auto_augment {knobs['auto_augment']!r}; valid: {list(AUTO_AUGMENTS)} or None")
    if knobs["crop_scale"] is not None:
        lo, hi = knobs["crop_scale"]
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {knobs['crop_scale']}")
    return knobs
