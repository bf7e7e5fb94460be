"""Image classification (single-label, multi-label): the task's data arguments and what the shared code asks
of the task (:data:`TASK`). Imports no torchvision: the image pipeline (:mod:`ftlib.data.image`) loads when used."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ftlib.core.options import refuse_without
from ftlib.data.arguments import DataArguments, tune_thresholds_field
from ftlib.data.knobs import check_knobs


@dataclass
class ImageDataArguments(DataArguments):
    """Image classification: a Hub dataset, a local image folder, or csv / jsonl / parquet files of image paths
    (relative to the file's folder) and labels; single-label or multi-label."""

    image_folder: str | None = field(
        default=None,
        metadata={"help": "Local folder of <class>/<image> (or {train,val,test}/<class>/<image>); the short name "
                          "'sklearn-digits' exports scikit-learn's bundled digits into the ftlib cache and uses them."},
    )
    image_column: str = field(
        default="image", metadata={"help": "Column with the images (a Hub Image feature) or image paths."}
    )
    id_column: str | None = field(
        default=None, metadata={"help": "Column identifying rows in predictions (default: the image path, else the row number)."}
    )
    multi_label: bool = field(
        default=False,
        metadata={"help": "Several labels per image (a list, or strings split at --label_separator); sigmoid outputs. "
                          "Lists and --label_separator imply it."},
    )
    label_separator: str | None = field(
        default=None, metadata={"help": "Multi-label from strings like 'cat;dog': the separator (';')."}
    )
    tune_thresholds: bool | None = tune_thresholds_field()
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train and predict at this square size instead of the checkpoint's (its resize-to-crop ratio "
                          "kept); the saved image processor is changed to match. ViT-style models need their own size."},
    )
    augmentation: str = field(
        default="light",
        metadata={"help": "Training augmentation preset: none, light (random resized crop + flip), standard (+ rotation, "
                          "colour jitter), strong (+ TrivialAugment, random erasing). Evaluation is resize + centre crop.",
                  "choices": ["none", "light", "standard", "strong"]},
    )
    augmentation_knobs: str | None = field(
        default=None,
        metadata={"help": 'JSON object (a mapping in YAML) overriding the preset\'s knobs, e.g. \'{"hflip": 0.0, '
                          '"crop_scale": [0.5, 1.0]}\'. Knobs: crop_scale, crop_ratio, hflip, vflip, rotation, color_jitter, '
                          "auto_augment (trivial / rand), rand_magnitude, erasing, crop_pct (evaluation too)."},
    )
    mixup_alpha: float = field(default=0.0, metadata={"help": "MixUp Beta(alpha, alpha) on training batches (0 = off)."})
    cutmix_alpha: float = field(default=0.0, metadata={"help": "CutMix Beta(alpha, alpha) on training batches (0 = off)."})
    mixup_prob: float = field(
        default=1.0, metadata={"help": "Share of training batches mixed when MixUp or CutMix is on (one of the two at random)."}
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Decode every image once before training, so a bad file fails early, named. Off: it fails "
                          "when a worker reaches it (still named)."},
    )
    skip_corrupt_images: bool = field(
        default=False, metadata={"help": "Drop unreadable or truncated images (counted and listed in the log) instead of failing."}
    )

    def _source_fields(self) -> tuple[str, ...]:
        return ("dataset_name", "train_file", "image_folder")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_knobs(self.augmentation, self.knobs)
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(f"--mixup_alpha and --cutmix_alpha must be >= 0, got {self.mixup_alpha}, {self.cutmix_alpha}")
        if not 0.0 <= self.mixup_prob <= 1.0:
            raise ValueError(f"--mixup_prob must be in [0, 1], got {self.mixup_prob}")
        refuse_without(self, "--mixup_alpha or --cutmix_alpha", self.mixing, ("mixup_prob",))
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image_size must be at least 8, got {self.image_size}")
        if self.skip_corrupt_images and not self.check_images:
            raise ValueError("--skip_corrupt_images needs --check_images (the scan is what finds them)")

    @property
    def knobs(self) -> dict:
        """The augmentation knob overrides as a dict."""
        if not self.augmentation_knobs:
            return {}
        try:
            knobs = json.loads(self.augmentation_knobs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--augmentation_knobs is not valid JSON: {err}") from None
        if not isinstance(knobs, dict):
            raise ValueError(f"--augmentation_knobs must be a JSON object, got {self.augmentation_knobs!r}")  # noqa: TRY004
        return knobs

    @property
    def problem_type(self) -> str | None:
        """Multi-label when asked; otherwise detected from the label column."""
        return "multi_label_classification" if self.multi_label else None

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0
