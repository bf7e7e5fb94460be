"""Object detection (COCO-format boxes): the task's data arguments and what the shared code asks of the task
(:data:`TASK`). Imports no torch, torchvision or transformers: data, training and metrics live in
:mod:`ftlib.tasks.object_detection_data` and :mod:`ftlib.tasks.object_detection_eval`, loaded when used."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlib.core.system import default_num_workers
from ftlib.data.arguments import DataArguments
from ftlib.tasks.base import TRAINING_DEFAULTS, PredictError, Task, atomic_file

AUGMENTATIONS = ("none", "light", "standard")


@dataclass
class DetectionDataArguments(DataArguments):
    """Object detection: COCO-format json files (``images``, ``annotations`` with ``bbox`` [x, y, w, h] in pixels,
    ``categories``) beside a folder of images, or a Hub dataset in the layout of transformers' object-detection
    example (an ``image`` column, an ``objects`` column of ``bbox`` / ``category`` / ``area`` / ``id`` lists)."""

    image_folder: str | None = field(
        default=None,
        metadata={"help": "Folder the json files' file_names are relative to (default: the json's folder + images/ "
                          "when that exists, else the json's folder)."},
    )
    image_column: str = field(default="image", metadata={"help": "Hub dataset: the column with the images."})
    objects_column: str = field(
        default="objects", metadata={"help": "Hub dataset: the column of boxes (bbox xywh, category, area, id)."}
    )
    classes: list[str] | None = field(
        default=None,
        metadata={"help": "Keep only these categories (by name, e.g. person); other categories' boxes are dropped, their "
                          "images kept (as negatives when no box is left)."},
    )
    image_size: int = field(
        default=448,
        metadata={"help": "Images are resized so that their shorter side is this (the longer at most --max_image_size); "
                          "the saved image processor does the same at inference."},
    )
    max_image_size: int | None = field(
        default=None, metadata={"help": "The longer side's limit (default: 10/7 of --image_size, 640 for 448)."}
    )
    augmentation: str = field(
        default="light",
        metadata={"help": "Box-aware training augmentation: none, light (horizontal flip, colour jitter), standard (+ "
                          "random scale / translate / crop, photometric distortion). Boxes that leave the image or "
                          "collapse are dropped.", "choices": list(AUGMENTATIONS)},
    )
    box_tolerance: float = field(
        default=1.0,
        metadata={"help": "Boxes at most this many pixels outside their image are clipped to it (counted in the log); "
                          "further out is an error naming the annotation."},
    )
    score_threshold: float = field(
        default=0.05,
        metadata={"help": "Predictions (--test_file, ftlib-predict) keep the detections scoring at least this (at most "
                          "100 per image); evaluation scores every detection."},
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Decode every image once before training, so a bad file fails early, named."},
    )

    def _source_fields(self) -> tuple[str, ...]:
        return ("dataset_name", "train_file")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size < 8:
            raise ValueError(f"--image_size must be at least 8, got {self.image_size}")
        if self.max_image_size is not None and self.max_image_size < self.image_size:
            raise ValueError(f"--max_image_size {self.max_image_size} is below --image_size {self.image_size}")
        if self.box_tolerance < 0:
            raise ValueError(f"--box_tolerance must be >= 0, got {self.box_tolerance}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"--score_threshold must be in [0, 1], got {self.score_threshold}")

    @property
    def longest_edge(self) -> int:
        return self.max_image_size or round(self.image_size * 10 / 7)


# The default strategy for a pretrained backbone under a fresh DETR head on small data: the head (the transformer and
# its prediction heads, all new) learns at 10x the backbone's rate, the backbone's blocks less the lower they sit; DETR's
# own recipe for the rest (AdamW, weight decay 1e-4, gradient clipping at 0.1, frozen batch norm); at least 300 steps,
# since a DETR head learns to place boxes slowly (80 images at batch 8 for 3 epochs are 30 steps).
DEFAULTS = {
    **TRAINING_DEFAULTS,
    "remove_unused_columns": False,  # the lazy transform needs the image and objects columns
    "dataloader_num_workers": default_num_workers(),
    "learning_rate": 5e-5,
    "head_learning_rate": 5e-4,
    "layer_decay": 0.8,
    "warmup_steps": 0.05,
    "weight_decay": 1e-4,
    "max_grad_norm": 0.1,
    "batch_norm": "frozen",
    "min_train_steps": 300,
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
}


def read_input(path: Path, settings: dict[str, Any], options: dict[str, Any]):
    """A folder (every image under it, sorted by path, named by its path) or a COCO-format json of ``images``
    (file names relative to it, or to its images/ folder); every image decoded once first (``check_images``)."""
    from ftlib.data.image import list_image_folder, scan_images
    from ftlib.tasks.object_detection_data import read_coco

    if path.is_dir():
        rows = list_image_folder(path, "image")
        ids = list(rows["image"])
    else:
        try:
            coco = read_coco(path, None, None, tolerance=float(settings.get("box_tolerance", 1.0)))
        except ValueError as err:
            raise PredictError(str(err)) from None
        rows = coco.dataset
        ids = list(rows["image_id"])
    if not len(rows):
        raise PredictError(f"{path}: no image to predict")
    if settings.get("check_images", True):
        scan_images(rows, "image", num_threads=options.get("num_workers") or default_num_workers() or None)
    return rows, ids


def predict(model, folder, rows, ids, settings: dict[str, Any], output: Path, options: dict[str, Any]) -> None:
    """COCO-results json: ``[{"image_id", "file_name", "category_id", "bbox" (xywh), "score"}]``, the run's original
    category ids (``categories.json``), for the detections scoring at least ``--threshold`` (else the run's
    ``score_threshold``)."""
    from transformers import AutoImageProcessor

    from ftlib.tasks.object_detection_data import coco_results, detect, read_categories

    processor = AutoImageProcessor.from_pretrained(folder.path)
    threshold = options["threshold"] if options.get("threshold") is not None else float(settings["score_threshold"])
    workers = options["num_workers"] if options.get("num_workers") is not None else default_num_workers()
    detections = detect(model, processor, rows["image"], batch_size=options["batch_size"], device=options["device"],
                        threshold=threshold, num_workers=workers, progress=options.get("progress", False))
    names = [str(p) for p in rows["image"]]
    results = coco_results(detections, ids, read_categories(folder.path, model.config.id2label), names)
    with atomic_file(output) as partial:
        partial.write_text(json.dumps(results) + "\n", encoding="utf-8")


TASK = Task(
    name="detection",
    title="object detection",
    pipeline_tag="object-detection",
    data_arguments=DetectionDataArguments,
    auto_model="AutoModelForObjectDetection",
    head_suffix="ForObjectDetection",
    predict_settings=("check_images", "score_threshold"),
    output_suffixes=(".json",),
    defaults=DEFAULTS,
    read_input=read_input,
    predict=predict,
)
