"""Semantic segmentation (a class id per pixel): the task's data arguments and what the shared code asks of the task
(:data:`TASK`). Imports no torch: the data, transforms and metrics (:mod:`ftlib.tasks.semantic_segmentation_data`)
load when used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlib.core.options import refuse_without
from ftlib.core.system import default_num_workers
from ftlib.data.arguments import DataArguments
from ftlib.tasks.base import TRAINING_DEFAULTS, PredictError, Task

AUGMENTATIONS = ("none", "light", "standard")


@dataclass
class SegmentationDataArguments(DataArguments):
    """Semantic segmentation: image + mask PNG pairs (a pixel holds its class id) from two folders matched by file
    stem, csv / jsonl / parquet files of image and mask paths (relative to the file), or a Hub dataset."""

    image_folder: str | None = field(
        default=None,
        metadata={"help": "Folder of images (or train / val / test sub-folders of them); masks from --mask_folder, "
                          "matched by file stem (a.jpg <-> a.png), the same sub-folders."},
    )
    mask_folder: str | None = field(
        default=None, metadata={"help": "Folder of mask PNGs (pixel = class id) beside --image_folder."}
    )
    image_column: str = field(default="image", metadata={"help": "Column with the images (Image feature or paths)."})
    mask_column: str = field(
        default="mask", metadata={"help": "Column with the masks (Image feature or paths of single-channel PNGs)."}
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={"help": "Class names: a JSON file ({id: name}, a list of names, or a COCO-style list of {id, name} "
                          "such as semantic_categories.json) or the names in id order. Default: class_<id> for every "
                          "value found in the masks."},
    )
    classes: list[str] | None = field(
        default=None,
        metadata={"help": "Keep only these classes (by name, from --class_names): they become labels 1..N, every other "
                          "class becomes 'background' (0); void and --ignore_index pixels stay ignored."},
    )
    void_id: int | None = field(
        default=None,
        metadata={"help": "A mask value meaning unlabelled (COCO panoptic's 0): ignored like --ignore_index."},
    )
    ignore_index: int = field(
        default=255, metadata={"help": "Mask value ignored by the loss and the metrics (and filled into padding)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={"help": "Train and predict at this square size (the saved image processor matches). Default: the "
                          "checkpoint processor's; for a model built on --backbone, its processor's crop size. ViTs "
                          "need a multiple of their patch size."},
    )
    augmentation: str = field(
        default="light",
        metadata={"help": "Training augmentation of image and mask together: none, light (random resized crop + "
                          "flip), standard (scale jitter 0.5-2x, random crop padded with --ignore_index, flip, "
                          "colour jitter). Evaluation resizes as the image processor does.",
                  "choices": list(AUGMENTATIONS)},
    )
    check_images: bool = field(
        default=True,
        metadata={"help": "Decode every image and mask once before training: unreadable files, sizes that differ, "
                          "masks that are not class-id PNGs and values that are not classes fail, named, before any "
                          "step."},
    )

    def _source_fields(self) -> tuple[str, ...]:
        return ("dataset_name", "train_file", "image_folder")

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.image_folder is None) != (self.mask_folder is None):
            raise ValueError("--image_folder and --mask_folder go together (images and their masks)")
        refuse_without(self, "--class_names", bool(self.class_names), ("classes",))
        if not 0 <= self.ignore_index <= 65535:
            raise ValueError(f"--ignore_index must be in [0, 65535] (a mask value), got {self.ignore_index}")
        if self.void_id is not None and not 0 <= self.void_id <= 65535:
            raise ValueError(f"--void_id must be in [0, 65535] (a mask value), got {self.void_id}")
        if self.image_size is not None and self.image_size < 8:
            raise ValueError(f"--image_size must be at least 8, got {self.image_size}")


DEFAULTS = {
    **TRAINING_DEFAULTS,
    "remove_unused_columns": False,  # the lazy transform needs the image and mask columns
    "dataloader_num_workers": default_num_workers(),  # decode and augment beside the training step
    # Metrics accumulate batch by batch (a confusion matrix): the validation set's full-size logits are never held.
    "batch_eval_metrics": True,
    # A pretrained backbone under a fresh decode head, on small data: the head learns ten times faster than the
    # backbone's top block, lower blocks less still, a warm-up before the backbone moves, and at least 250 optimizer
    # steps however few the images. A backbone's batch norm (ResNet's) keeps its pretrained statistics with batches
    # of a few images; the fresh decode head's trains (it has no statistics to keep).
    "learning_rate": 1e-4,
    "head_learning_rate": 1e-3,
    "layer_decay": 0.8,
    "warmup_steps": 0.1,
    "weight_decay": 0.01,
    "min_train_steps": 250,
    "batch_norm": "frozen",
}


def read_input(path: Path, settings: dict[str, Any], options: dict[str, Any]):
    """A folder (every image under it, sorted by path, named by its path relative to the folder) or a csv / jsonl /
    parquet file of image paths relative to the file; every image decoded once first (``check_images``)."""
    from ftlib.data.files import empty_rows, load_files, require_columns
    from ftlib.data.image import image_ids, image_references, list_image_folder, scan_images

    column = settings["image_column"]
    data = list_image_folder(path, column) if path.is_dir() else load_files({"predict": str(path)})["predict"]
    require_columns(data, [column], str(path))
    data = image_references(data, column, None if path.is_dir() else path)
    missing = empty_rows(data, [column])
    if missing:
        raise PredictError(f"{path}: data row {missing[0] + 1} has no image in column '{column}'")
    if settings["check_images"]:
        scan_images(data, column, num_threads=options.get("num_workers") or default_num_workers() or None)
    ids = image_ids(data, column)
    if path.is_dir():
        ids = [str(Path(i).relative_to(path)) for i in ids]
    return data, ids


def predict(model, folder, data, ids, settings: dict[str, Any], output: Path, options: dict[str, Any]) -> None:
    """A mask PNG per image (pixel = class id, the image's size) in ``<output stem>_masks/``, and ``output`` (csv or
    jsonl): one row per image with its mask's path and the share of pixels of each class."""
    from ftlib.tasks.semantic_segmentation_data import predict_masks

    predict_masks(model, folder.path, data, ids, settings, output, options)


TASK = Task(
    name="segmentation",
    title="semantic segmentation",
    pipeline_tag="image-segmentation",
    data_arguments=SegmentationDataArguments,
    auto_model="AutoModelForSemanticSegmentation",
    head_suffix="ForSemanticSegmentation",
    predict_settings=("image_column", "check_images"),
    output_suffixes=(".csv", ".jsonl"),
    defaults=DEFAULTS,
    read_input=read_input,
    predict=predict,
    one_output_is_regression=False,
)
