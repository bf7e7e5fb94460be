"""Semantic-segmentation data, model and metrics: image / mask pairs as rows of references, class names and the map
from mask values to label ids, a check of every pair before training, transforms that move image and mask together
(torchvision ``tv_tensors.Mask``: nearest-neighbour, padding with the ignore index), the model (a segmentation
checkpoint, or UperNet on a backbone), metrics accumulated batch by batch, the worst validation images drawn as
overlays, and ftlib-predict's mask writer.

Rows hold references (paths, or undecoded Hub bytes); pixels are decoded per batch in the DataLoader workers, and a
mask's values become label ids there through a lookup table (:class:`LabelMap`).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ftlib.core.system import available_cpus
from ftlib.data.files import load_data, require_columns, source_name
from ftlib.data.image import (
    IMAGE_EXTENSIONS,
    SPLIT_ALIASES,
    _open_raw,
    _source_name,
    image_references,
    open_image,
    processor_geometry,
)
from ftlib.data.labels import ensure_validation

logger = logging.getLogger(__name__)

MASK_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "1")  # single-channel modes that hold class ids
MAX_VALUE = 65535  # 16-bit masks at most
NOT_A_CLASS = -1  # in the lookup table: a value no class has


# -- sources -----------------------------------------------------------------------------------------------------

def _images_by_stem(folder: Path, what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        key = str(path.relative_to(folder).with_suffix(""))
        if key in found:
            raise ValueError(f"{what} {found[key]} and {path} have the same name: keep one")
        found[key] = path
    return found


def pair_folders(images: Path, masks: Path, image_column: str, mask_column: str) -> Dataset:
    """Rows of (image path, mask path), matched by their path relative to the folders without the extension. An
    image without a mask is an error naming it; masks without an image are ignored (counted in the log)."""
    for folder, flag in ((images, "--image_folder"), (masks, "--mask_folder")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{flag} {folder}: no such folder")
    by_image, by_mask = _images_by_stem(images, "images"), _images_by_stem(masks, "masks")
    if not by_image:
        raise ValueError(f"No images found in {images} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    missing = [str(path) for key, path in by_image.items() if key not in by_mask]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ValueError(f"image {missing[0]} has no mask in {masks} (a PNG of the same name){more}")
    unused = len(set(by_mask) - set(by_image))
    if unused:
        logger.warning("%d mask(s) in %s have no image in %s: ignored", unused, masks, images)
    keys = sorted(by_image)
    return Dataset.from_dict({image_column: [str(by_image[k]) for k in keys],
                              mask_column: [str(by_mask[k]) for k in keys]})


def load_segmentation_data(data_args, seed: int, cache_dir: str | None = None) -> DatasetDict:
    """The splits ``data_args`` names (image and mask folders, files of paths, or a Hub dataset) with both columns
    undecoded and file paths absolute; a seeded validation split carved out of train when none is given, then
    ``--max_*_samples`` applied."""
    from ftlib.data.files import limit_samples

    columns = [data_args.image_column, data_args.mask_column]
    if data_args.image_folder:
        images, masks = Path(data_args.image_folder), Path(data_args.mask_folder)
        splits = {SPLIT_ALIASES[p.name]: p.name for p in sorted(images.iterdir())
                  if p.is_dir() and p.name in SPLIT_ALIASES} if images.is_dir() else {}
        if "train" in splits:
            raw = DatasetDict({split: pair_folders(images / name, masks / name, *columns)
                               for split, name in splits.items()})
        else:
            raw = DatasetDict(train=pair_folders(images, masks, *columns))
    else:
        raw = load_data(data_args, cache_dir)
        for split in list(raw):
            require_columns(raw[split], columns if split != "test" or data_args.mask_column in
                            raw[split].column_names else columns[:1], source_name(data_args, split))
            table = getattr(data_args, f"{split}_file", None) if data_args.train_file else None
            for column in columns:
                if column in raw[split].column_names:
                    raw[split] = image_references(raw[split], column, table)
    raw = ensure_validation(raw, None, data_args.validation_split_percentage, seed, stratify=False,
                            strata=[0] * len(raw["train"]))  # unstratified
    return limit_samples(raw, data_args)


def avoid_one_image_batch(train: Dataset, batch_size: int) -> Dataset:
    """The training rows, less the last one when the last batch of an epoch would hold a single image: UperNet's
    pyramid pooling normalises 1x1 maps with batch norm, which cannot train on one value per channel."""
    if batch_size > 1 and len(train) % batch_size == 1:
        logger.warning("%d training images at %d a batch would leave one image alone in the last batch (batch norm "
                       "cannot train on it): the last image is left out", len(train), batch_size)
        return train.select(range(len(train) - 1))
    return train


# -- classes -----------------------------------------------------------------------------------------------------

def read_class_names(given: Sequence[str] | None) -> dict[int, str] | None:
    """``--class_names``: a JSON file (``{id: name}``, a list of names in id order, or a list of ``{id, name}``) or
    the names themselves in id order; ``{mask value: name}``."""
    if not given:
        return None
    if len(given) == 1 and given[0].endswith(".json"):
        path = Path(given[0])
        if not path.is_file():
            raise FileNotFoundError(f"--class_names {path}: no such file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"--class_names {path} is not valid JSON: {err}") from None
        if isinstance(data, Mapping):
            names = {int(k): str(v) for k, v in data.items()}
        elif isinstance(data, list) and all(isinstance(d, Mapping) and "id" in d and "name" in d for d in data):
            names = {int(d["id"]): str(d["name"]) for d in data}
        elif isinstance(data, list) and all(isinstance(d, str) for d in data):
            names = dict(enumerate(data))
        else:
            raise ValueError(f"--class_names {path}: expected {{id: name}}, a list of names or a list of {{id, name}}")
    else:
        names = dict(enumerate(given))
    repeated = sorted({n for n in names.values() if list(names.values()).count(n) > 1})
    if repeated:
        raise ValueError(f"--class_names: {', '.join(repeated)} named twice")
    return names


@dataclass
class LabelMap:
    """Mask values -> label ids: ``table[value]`` is the label id, ``ignore_index``, or ``NOT_A_CLASS`` (an error
    when a mask holds it). ``names``: the label names, id order."""

    table: np.ndarray
    names: list[str]
    ignore_index: int

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def apply(self, values: np.ndarray) -> np.ndarray:
        return self.table[values]


def build_label_map(class_names: dict[int, str] | None, classes: Sequence[str] | None, ignore_index: int,
                    void_id: int | None, found_values: set[int] | None = None) -> LabelMap:
    """The label ids: with ``classes``, background 0 and those classes 1..N (every other named class -> 0); with
    names, the named mask values in increasing order -> 0..K-1; without names, every value found in the masks (up to
    the largest) is its own label ``class_<value>``. ``ignore_index`` and ``void_id`` pixels are ignored."""
    table = np.full(MAX_VALUE + 1, NOT_A_CLASS, dtype=np.int64)
    if class_names is None:
        values = sorted(v for v in (found_values or set()) if v not in (ignore_index, void_id))
        if not values:
            raise ValueError("the masks hold no class value (only the ignore index / void id)")
        count = values[-1] + 1
        table[:count] = np.arange(count)
        names = [f"class_{v}" for v in range(count)]
    elif classes:
        by_name = {name: value for value, name in class_names.items()}
        unknown = [c for c in classes if c not in by_name]
        if unknown:
            raise ValueError(f"--classes {', '.join(unknown)}: not among the class names "
                             f"({', '.join(list(by_name)[:10])}{', ...' if len(by_name) > 10 else ''})")
        for value in class_names:
            table[value] = 0
        for label, name in enumerate(classes, 1):
            table[by_name[name]] = label
        names = ["background", *classes]
    else:
        for label, value in enumerate(sorted(class_names)):
            table[value] = label
        names = [class_names[v] for v in sorted(class_names)]
    if ignore_index < len(names):
        raise ValueError(f"{len(names)} classes but --ignore_index {ignore_index} is one of their ids: choose a "
                         "larger --ignore_index")
    table[ignore_index] = ignore_index
    if void_id is not None:
        table[void_id] = ignore_index
    return LabelMap(table, names, ignore_index)


# -- decoding and checking -----------------------------------------------------------------------------------------

class MaskError(ValueError):
    """A mask that cannot serve: unreadable, not class ids, the wrong size, or values that are no class."""


def open_mask(source: Any) -> np.ndarray:
    """A mask's class-id values as an integer array [H, W]. Single-channel PNGs (8 or 16 bits) and palette PNGs
    (their indices) hold class ids; a colour mask is refused, with what to give instead."""
    name = _source_name(source)
    try:
        mask = _open_raw(source)
        mask.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ... for bad files
        raise MaskError(f"Corrupt or unreadable mask {name}: {type(exc).__name__}: {exc}") from exc
    if mask.mode not in MASK_MODES:
        raise MaskError(f"mask {name} is a {mask.mode} image: masks must be single-channel PNGs whose pixel values "
                        "are class ids (mode L, I;16 or a palette P PNG), not colours; convert colour masks to class "
                        "ids first")
    values = np.asarray(mask)
    return values.astype(np.int64) if values.dtype != np.int64 else values


def _image_size(source: Any) -> tuple[int, int]:
    """(width, height) of an image as it decodes (EXIF orientation applied)."""
    image = _open_raw(source)
    orientation = image.getexif().get(0x0112)
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: open_image transposes it
        return image.size[1], image.size[0]
    return image.size


def check_pair(image: Any, mask: Any) -> tuple[set[int], str | None]:
    """The values a mask holds, and a problem with the pair (None when fine): the image unreadable, the mask
    unreadable or not class ids, or their sizes differing."""
    try:
        open_image(image)
        size = _image_size(image)
    except Exception as exc:  # noqa: BLE001 - the verdict names it
        return set(), str(exc)
    try:
        values = open_mask(mask)
    except MaskError as exc:
        return set(), str(exc)
    if (values.shape[1], values.shape[0]) != size:
        return set(), (f"mask {_source_name(mask)} is {values.shape[1]}x{values.shape[0]} but its image "
                       f"{_source_name(image)} is {size[0]}x{size[1]}")
    return {int(v) for v in np.unique(values)}, None


def scan_pairs(data: DatasetDict, image_column: str, mask_column: str, num_threads: int | None = None
               ) -> dict[str, list[set[int]]]:
    """Decode every image and mask once (threads): the first bad pair, in split and row order, is an error naming
    its files. Returns the values each split's masks hold, per row."""
    found: dict[str, list[set[int]]] = {}
    threads = num_threads or min(8, available_cpus())
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for split, rows in data.items():
            if mask_column not in rows.column_names:
                continue
            plain = rows.with_format(None)
            values: list[set[int]] = []
            for start in range(0, len(plain), 256):
                chunk = plain[start:start + 256]
                for held, problem in pool.map(check_pair, chunk[image_column], chunk[mask_column]):
                    if problem:
                        raise MaskError(f"{split} split: {problem}")
                    values.append(held)
            found[split] = values
    return found


def check_values(found: dict[str, list[set[int]]], data: DatasetDict, mask_column: str, labels: LabelMap) -> None:
    """Every mask value is a class, the ignore index or the void id; else an error naming the value and the mask."""
    for split, per_row in found.items():
        for row, values in enumerate(per_row):
            bad = sorted(v for v in values if labels.table[v] == NOT_A_CLASS)
            if bad:
                mask = _source_name(data[split].with_format(None)[row][mask_column])
                raise MaskError(f"mask {mask} ({split} split) holds value(s) {', '.join(map(str, bad[:5]))} that are "
                                f"no class id (classes: {len(labels.names)}, ignore index {labels.ignore_index}); "
                                "give --class_names with every id, --void_id for an unlabelled value, or fix the mask")


# -- transforms ----------------------------------------------------------------------------------------------------

def build_seg_transforms(processor: Any, preset: str, train: bool, ignore_index: int) -> v2.Compose:
    """(image, mask) -> (normalised float [3, H, W], long [H, W]), sized from the image processor. Geometry moves
    both together; the mask is resized nearest-neighbour (``tv_tensors.Mask``) and padding is ``ignore_index``.
    Evaluation (or preset none) resizes as the processor does."""
    geo = processor_geometry(processor)
    size = geo["size"]
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
    steps: list = []
    if train and preset == "light":
        steps += [v2.RandomResizedCrop(size, scale=(0.5, 1.0), interpolation=geo["interpolation"], antialias=True),
                  v2.RandomHorizontalFlip()]
    elif train and preset == "standard":
        steps += [v2.ScaleJitter(size, scale_range=(0.5, 2.0), interpolation=geo["interpolation"], antialias=True),
                  v2.RandomCrop(size, pad_if_needed=True, fill=fill), v2.RandomHorizontalFlip(),
                  v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)]
    else:
        steps.append(v2.Resize(geo["resize"], interpolation=geo["interpolation"], antialias=True))
        if geo["crop"] is not None:
            steps.append(v2.CenterCrop(geo["crop"]))
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
              v2.Normalize(list(geo["mean"]), list(geo["std"])), v2.ToPureTensor()]
    return v2.Compose(steps)


class SegTransform:
    """Batch transform for ``Dataset.with_transform``: decode images and masks, map mask values to label ids,
    transform both together into ``pixel_values`` and ``labels``. Without a mask column (prediction) it keeps each
    image's original ``size`` (height, width). A class, so that it pickles into DataLoader workers."""

    def __init__(self, transform, image_column: str, mask_column: str | None = None, labels: LabelMap | None = None):
        self.transform, self.image_column, self.mask_column, self.labels = transform, image_column, mask_column, labels

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"pixel_values": []}
        masks = batch.get(self.mask_column) if self.mask_column else None
        if masks is None:
            out["size"] = []
        else:
            out["labels"] = []
        for row, source in enumerate(batch[self.image_column]):
            image = tv_tensors.Image(v2.functional.pil_to_tensor(open_image(source)))
            if masks is None:
                out["pixel_values"].append(self.transform(image))
                out["size"].append(torch.tensor(image.shape[-2:]))
                continue
            mask = tv_tensors.Mask(torch.from_numpy(self.labels.apply(open_mask(masks[row]))))
            pixels, labels = self.transform(image, mask)
            out["pixel_values"].append(pixels)
            out["labels"].append(labels)
        return out


def seg_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
    for key in ("labels", "size"):
        if key in features[0]:
            batch[key] = torch.stack([f[key] for f in features]).long()
    return batch


# -- model ----------------------------------------------------------------------------------------------------------

IGNORE_INDEX_ATTRIBUTES = ("semantic_loss_ignore_index", "loss_ignore_index")  # SegFormer / DPT / BEiT; UperNet


def set_ignore_index(config, ignore_index: int) -> None:
    """The model's loss ignores ``ignore_index`` (its config names the setting one of two ways)."""
    names = [name for name in IGNORE_INDEX_ATTRIBUTES if hasattr(config, name)]
    if not names:
        logger.warning("%s has no ignore-index setting: its loss may count ignored pixels", type(config).__name__)
    for name in names:
        setattr(config, name, ignore_index)


def segmentation_processor(base_processor, image_size: int | None, patch_size: int | None = None):
    """The image processor saved with a model built on a backbone: SegFormer's (which the image-segmentation
    pipeline post-processes with), the backbone's mean and std, ``image_size`` square (default: the backbone
    processor's crop, else 224), a multiple of the patch size for ViTs."""
    from transformers import SegformerImageProcessor

    geo = processor_geometry(base_processor) if base_processor is not None else None
    size = image_size or (min(geo["size"]) if geo else 224)
    if patch_size and size % patch_size:
        raise ValueError(f"--image_size {size} is not a multiple of the backbone's patch size {patch_size}: "
                         f"use {size - size % patch_size} or {size - size % patch_size + patch_size}")
    mean = getattr(base_processor, "image_mean", None) or [0.485, 0.456, 0.406]
    std = getattr(base_processor, "image_std", None) or [0.229, 0.224, 0.225]
    return SegformerImageProcessor(size={"height": size, "width": size}, image_mean=list(mean), image_std=list(std),
                                   do_reduce_labels=False)


def builds_on_backbone(model_args, config) -> bool:
    """Whether the model is UperNet built on the checkpoint as a backbone: ``--backbone``, or a checkpoint that is a
    plain backbone transformers has no segmentation model of its own for (DINOv2, ResNet; SegFormer's encoder gets
    SegFormer's own head)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES

    from ftlib.training.backbone import is_backbone_only

    return bool(getattr(model_args, "backbone", None)) or (
        is_backbone_only(config) and config.model_type not in MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)


def build_segmenter(checkpoint: str, model_args, labels: LabelMap, assembled: bool):
    """A fresh UperNet (decode head of 256 channels, no auxiliary head) on the backbone of ``checkpoint``, its
    pretrained weights loaded unless ``--backbone_init random`` (``assembled``); or the segmentation checkpoint itself, its head sized to the labels
    (a head of another size is an error unless --ignore_mismatched_sizes)."""
    from transformers import AutoModelForSemanticSegmentation, UperNetConfig, UperNetForSemanticSegmentation

    from ftlib.training.modeling import load_config_for_labels, load_model

    if assembled:
        from ftlib.training.backbone import (
            apply_overrides,
            backbone_config,
            head_and_backbone_overrides,
            load_backbone_weights,
        )

        config = UperNetConfig(backbone_config=backbone_config(checkpoint, model_args, 4), hidden_size=256,
                               use_auxiliary_head=False, num_labels=len(labels.names), id2label=labels.id2label,
                               label2id={v: k for k, v in labels.id2label.items()})
        apply_overrides(config, head_and_backbone_overrides(model_args)[0])  # e.g. {"hidden_size": 128}
        set_ignore_index(config, labels.ignore_index)
        model = UperNetForSemanticSegmentation(config)
        if getattr(model_args, "backbone_init", "pretrained") == "pretrained":
            load_backbone_weights(model, checkpoint, model_args)
        return model
    config = load_config_for_labels(model_args, len(labels.names), labels.id2label, None, checkpoint=checkpoint,
                                    head_suffix="ForSemanticSegmentation")
    set_ignore_index(config, labels.ignore_index)
    return load_model(AutoModelForSemanticSegmentation, model_args, config, checkpoint)


# -- metrics --------------------------------------------------------------------------------------------------------

def class_maps(logits, labels):
    """``preprocess_logits_for_metrics``: the logits upsampled to the labels' size (bilinear), then the class of each
    pixel; metrics never hold full-size [classes, H, W] floats."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


class SegmentationMetrics:
    """A stateful ``compute_metrics`` for Trainer's ``batch_eval_metrics``: each batch's class maps update a
    confusion matrix (torchmetrics' ``MulticlassJaccardIndex``, ignore index skipped); the last batch computes mean
    IoU (over the classes present in labels or predictions), per-class IoU and pixel accuracy, and resets. It also
    keeps each image's own mean IoU from the last evaluation (``image_iou``), for the report's worst images. Called
    once with every prediction (``batch_eval_metrics`` off), it gives the same numbers."""

    def __init__(self, names: Sequence[str], ignore_index: int):
        self.names, self.ignore_index = list(names), ignore_index
        self.image_iou: list[float] = []
        self._reset()

    def _reset(self) -> None:
        from torchmetrics.classification import MulticlassJaccardIndex

        # Trainer hands every process the gathered batch: torchmetrics' own sync would count each image again.
        self.jaccard = MulticlassJaccardIndex(len(self.names), average="none", ignore_index=self.ignore_index,
                                              zero_division=float("nan"), validate_args=False, sync_on_compute=False)
        self._images: list[float] = []

    def __call__(self, eval_pred, compute_result: bool = True) -> dict[str, float]:
        from torchmetrics.functional.classification import multiclass_jaccard_index

        preds, labels = (torch.as_tensor(x) for x in (eval_pred.predictions, eval_pred.label_ids))
        preds, labels = preds.cpu(), labels.cpu().long()
        if preds.dim() == 4:  # logits (no preprocess_logits_for_metrics)
            preds = class_maps(preds, labels)
        self.jaccard.update(preds, labels)
        for pred, label in zip(preds, labels):
            iou = multiclass_jaccard_index(pred, label, len(self.names), average="none", ignore_index=self.ignore_index,
                                           zero_division=float("nan"), validate_args=False)
            self._images.append(float(iou.nanmean()) if not iou.isnan().all() else float("nan"))
        if not compute_result:
            return {}
        iou = self.jaccard.compute()
        matrix = self.jaccard.confmat.double()
        metrics = {"mean_iou": float(iou.nanmean()) if not iou.isnan().all() else 0.0,
                   "pixel_accuracy": float(matrix.diag().sum() / matrix.sum().clamp_min(1))}
        for name, value in zip(self.names, iou.tolist()):
            metrics[f"iou_{name}"] = 0.0 if math.isnan(value) else value  # in neither labels nor predictions
        self.image_iou = self._images
        self._reset()
        return metrics


# -- report: the worst validation images ---------------------------------------------------------------------------

PALETTE_SEED = 7


def palette(count: int) -> np.ndarray:
    """A colour per class (background 0 dark grey), fixed by the seed."""
    colours = np.random.default_rng(PALETTE_SEED).integers(40, 256, size=(max(count, 1), 3)).astype(np.uint8)
    colours[0] = (60, 60, 60)
    return colours


def overlay(image: Image.Image, mask: np.ndarray, colours: np.ndarray, ignore_index: int, alpha: float = 0.5
            ) -> Image.Image:
    """``mask`` (label ids, the image's size) drawn over ``image``; ignored pixels left as they are."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    keep = mask != ignore_index
    coloured = colours[np.where(keep, mask, 0).clip(0, len(colours) - 1)].astype(np.float32)
    mixed = np.where(keep[..., None], (1 - alpha) * base + alpha * coloured, base)
    return Image.fromarray(mixed.astype(np.uint8))


def write_worst_overlays(model, rows: Dataset, image_column: str, mask_column: str, labels: LabelMap, processor,
                         image_iou: Sequence[float], folder: Path, k: int = 8) -> list[Path]:
    """``worst_<rank>_iou<value>.png`` in ``folder``: for the ``k`` validation images of lowest mean IoU (the last
    evaluation's), the image, the true mask and the predicted one side by side. The model predicts them again,
    at the image's own size."""
    if not image_iou:
        return []
    order = [i for i in np.argsort(np.nan_to_num(np.asarray(image_iou), nan=2.0), kind="stable")[:k]
             if i < len(rows)]
    transform = build_seg_transforms(processor, "none", train=False, ignore_index=labels.ignore_index)
    colours = palette(len(labels.names))
    device = next(model.parameters()).device
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plain = rows.with_format(None)
    model.eval()
    for rank, index in enumerate(order, 1):
        row = plain[int(index)]
        image = open_image(row[image_column])
        truth = labels.apply(open_mask(row[mask_column]))
        pixels = transform(tv_tensors.Image(v2.functional.pil_to_tensor(image)))
        with torch.inference_mode():
            logits = model(pixel_values=pixels[None].to(device)).logits
        pred = F.interpolate(logits.float(), size=truth.shape, mode="bilinear", align_corners=False).argmax(1)[0]
        panels = [image.convert("RGB"), overlay(image, truth, colours, labels.ignore_index),
                  overlay(image, pred.cpu().numpy(), colours, labels.ignore_index)]
        sheet = Image.new("RGB", (sum(p.width for p in panels), image.height))
        for offset, panel in zip(np.cumsum([0] + [p.width for p in panels[:-1]]), panels):
            sheet.paste(panel, (int(offset), 0))
        path = folder / f"worst_{rank:02d}_iou{image_iou[index]:.3f}.png"
        sheet.save(path)
        written.append(path)
    return written


# -- ftlib-predict ---------------------------------------------------------------------------------------------------

def mask_folder_for(output: Path) -> Path:
    """Where ftlib-predict writes the mask PNGs for the index ``output``: ``<output stem>_masks`` beside it."""
    return output.with_name(f"{output.stem}_masks")


def predict_masks(model, model_folder: Path, data: Dataset, ids: list[str], settings: dict[str, Any], output: Path,
                  options: dict[str, Any]) -> None:
    """A mask PNG per image, written as its batch comes (pixel = class id, 8-bit, 16-bit beyond 256 classes; the
    image's size: logits upsampled bilinearly, then the class), and the index ``output``: id, mask path, and the
    share of pixels per class."""
    from torch.utils.data import DataLoader
    from transformers import AutoImageProcessor

    from ftlib.core.system import default_num_workers
    from ftlib.tasks.base import atomic_file, inference_batches

    processor = AutoImageProcessor.from_pretrained(model_folder)
    column = settings["image_column"]
    transform = build_seg_transforms(processor, "none", train=False, ignore_index=0)
    images = data.select_columns([column]).with_transform(SegTransform(transform, column))
    workers = options["num_workers"] if options.get("num_workers") is not None else default_num_workers()
    loader = DataLoader(images, batch_size=options["batch_size"], num_workers=workers, collate_fn=seg_collate)
    names = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    masks = mask_folder_for(output)
    masks.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    rows = []
    position = 0
    for batch in inference_batches(loader, options["device"], options["progress"]):
        logits = model(pixel_values=batch["pixel_values"]).logits
        for logit, size in zip(logits, batch["size"].tolist()):
            classes = F.interpolate(logit[None].float(), size=tuple(size), mode="bilinear",
                                    align_corners=False).argmax(1)[0].cpu().numpy()
            row_id = ids[position]
            name = str(Path(row_id).with_suffix(".png")) if not Path(row_id).is_absolute() else Path(row_id).stem + ".png"
            if name in used:
                name = f"{Path(name).with_suffix('')}_{position}.png"
            used.add(name)
            path = masks / name
            path.parent.mkdir(parents=True, exist_ok=True)
            dtype = np.uint8 if len(names) <= 256 else np.uint16
            Image.fromarray(classes.astype(dtype)).save(path)
            share = np.bincount(classes.ravel(), minlength=len(names)) / classes.size
            rows.append({"id": row_id, "mask": str(path.relative_to(output.parent)),
                         **{f"share_{n}": round(float(s), 6) for n, s in zip(names, share)}})
            position += 1
    with atomic_file(output) as partial:
        if output.suffix.lower() == ".jsonl":
            partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        else:
            with partial.open("w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id", "mask"])
                writer.writeheader()
                writer.writerows(rows)
