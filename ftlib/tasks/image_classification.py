"""Image classification (single-label, multi-label): the task's data arguments and what the shared code asks
of the task (:data:`TASK`). Imports no torchvision: the image pipeline (:mod:`ftlib.data.image`) loads when used."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlib.core.options import refuse_without
from ftlib.core.system import default_num_workers
from ftlib.data.arguments import DataArguments, tune_thresholds_field
from ftlib.data.knobs import check_knobs
from ftlib.tasks.base import TRAINING_DEFAULTS, PredictError, Task
from ftlib.tasks.classification import OUTPUT_SUFFIXES, check_predict, predict_with_loader, usable_id_column


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


DEFAULTS = {
    **TRAINING_DEFAULTS,
    "remove_unused_columns": False,  # the lazy transform needs the image column, which the model does not take
    "dataloader_num_workers": default_num_workers(),  # decode and augment beside the training step
    # The default strategy, chosen on bench/image_cls_hymenoptera.py: with the "light" augmentation preset
    # (ImageDataArguments) it beat one learning rate without augmentation there (see the benchmark's docstring).
    "learning_rate": 5e-4,
    "warmup_steps": 0.1,  # a fraction of the steps: the new head settles before the body moves much
    "layer_decay": 0.8,  # block k from the top learns at 0.8**k of the top block's rate
    # Chosen on bench/image_suite.py (digits and hymenoptera subsets; docs/small_data.md): small sets get more
    # epochs, and batch-norm layers keep their pretrained statistics (a new domain's batch statistics in training
    # against ImageNet's running ones at evaluation cost digits 60 points).
    "min_train_steps": 250,
    "batch_norm": "frozen",
    # On photos close to ImageNet with tens of images per class, leaving the pretrained body alone (a linear probe)
    # beat fine-tuning it by 3-5 points on hymenoptera, while on digits the probe lost 16: so on small sets (those
    # the budget lengthens) the recipe trains both and keeps the one the validation split prefers.
    "compare_head_only": "small",
}


def read_input(path: Path, settings: dict[str, Any], options: dict[str, Any]):
    """A folder (every image under it, sorted by path, named by its path) or a csv / jsonl / parquet file of image
    paths relative to the file; every image decoded once first (``check_images``, in ``num_workers`` threads)."""
    from ftlib.data.files import empty_rows, load_files, require_columns
    from ftlib.data.image import image_ids, image_references, list_image_folder, scan_images

    column = settings["image_column"]
    if path.is_dir():
        data = list_image_folder(path, column)
    else:
        data = load_files({"predict": str(path)})["predict"]
    # a folder's images are named by their paths
    id_column = None if path.is_dir() else usable_id_column(data, settings, str(path), "id_column" in
                                                             options.get("given", ()), "their image paths")
    require_columns(data, [column, id_column], str(path))
    data = image_references(data, column, None if path.is_dir() else path)
    missing = empty_rows(data, [column])
    if missing:
        raise PredictError(f"{path}: data row {missing[0] + 1} has no image in column '{column}'"
                           + (f" ({len(missing)} rows in all)" if len(missing) > 1 else ""))
    if settings["check_images"]:
        scan_images(data, column, num_threads=options.get("num_workers") or default_num_workers() or None)  # names a corrupt file
    ids = data[id_column] if id_column else image_ids(data, column)
    return data, list(ids)


def predict(model, folder, data, ids, settings: dict[str, Any], output: Path, options: dict[str, Any]) -> None:
    """Labels for every image: decoded and transformed as for evaluation in ``num_workers`` DataLoader workers."""
    from torch.utils.data import DataLoader
    from transformers import AutoImageProcessor

    from ftlib.data.image import ImageTransform, build_transforms, image_collate

    processor = AutoImageProcessor.from_pretrained(folder.path)
    knobs = settings.get("augmentation_knobs") or {}
    knobs = json.loads(knobs) if isinstance(knobs, str) else dict(knobs)
    transform = build_transforms(processor, settings.get("augmentation", "none"), train=False, **knobs)
    column = settings["image_column"]
    images = data.select_columns([column]).with_transform(ImageTransform(transform, column))
    workers = options["num_workers"] if options.get("num_workers") is not None else default_num_workers()
    loader = DataLoader(images, batch_size=options["batch_size"], num_workers=workers, collate_fn=image_collate)
    predict_with_loader(model, folder, loader, ids, output, options)


TASK = Task(
    name="image",
    title="image classification",
    pipeline_tag="image-classification",
    data_arguments=ImageDataArguments,
    auto_model="AutoModelForImageClassification",
    head_suffix="ForImageClassification",
    predict_settings=("image_column", "id_column", "check_images"),
    output_suffixes=OUTPUT_SUFFIXES,
    defaults=DEFAULTS,
    read_input=read_input,
    predict=predict,
    check_predict=check_predict,
)
