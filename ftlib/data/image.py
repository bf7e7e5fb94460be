"""Image-classification data: sources as rows of image references, safe decoding, a scan for bad files,
transforms sized from the checkpoint's image processor, MixUp / CutMix, and the worker count.

Rows hold an image *reference* and a label, never decoded pixels: an image folder or csv / jsonl files give
a column of paths; a Hub dataset's ``Image`` column is cast to ``Image(decode=False)`` (bytes and path).
Pixels are decoded lazily, per batch, inside the DataLoader workers: ``Dataset.with_transform`` with an
:class:`ImageTransform`. Labels go through ``ftlib.data.labels`` like every task's (names, validation split,
encoding into a ``labels`` column). A Trainer fed these datasets needs ``remove_unused_columns=False``:
otherwise it drops the image column before the transform sees it.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from PIL import Image, ImageOps
from torchvision.transforms import v2

from ftlib.core.system import available_cpus, default_num_workers  # noqa: F401 - the image recipe imports it from here
from ftlib.data.files import load_data, require_columns
from ftlib.data.knobs import KNOBS, PRESETS, check_knobs  # noqa: F401 - KNOBS, PRESETS re-exported

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLIT_ALIASES = {"train": "train", "val": "validation", "valid": "validation", "validation": "validation",
                 "test": "test"}


# ----------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------

def _list_images(folder: Path) -> list[Path]:
    """Image files under `folder` (recursive, hidden entries skipped), sorted for determinism."""
    files = [p for p in folder.rglob("*")
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in p.relative_to(folder).parts)]
    return sorted(files)


def _class_folder_rows(folder: Path, image_column: str, label_column: str) -> dict[str, list[str]]:
    """`folder/<class>/**/<image>` -> columns of paths and class names; ValueError when no image is found."""
    paths: list[str] = []
    labels: list[str] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in _list_images(class_dir):
            paths.append(str(f))
            labels.append(class_dir.name)
    if not paths:
        raise ValueError(f"No images found in {folder} (expected {folder}/<class>/<image>)")
    return {image_column: paths, label_column: labels}


def load_image_folder(root: str | os.PathLike, image_column: str = "image",
                      label_column: str = "label") -> DatasetDict:
    """List an imagefolder tree into columns `image_column` (path) and `label_column` (class folder name).

    Layouts: `root/<class>/*` (a train split only) or `root/{train,val|valid|validation,test}/<class>/*`.
    Rows are sorted by path. Nothing is decoded, and no validation split is made here: that is
    `ftlib.data.labels.ensure_validation`'s job, the same for every source."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    subdirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    if "train" not in subdirs:
        return DatasetDict(train=Dataset.from_dict(_class_folder_rows(root, image_column, label_column)))
    splits: dict[str, Dataset] = {}
    for name, path in sorted(subdirs.items()):
        split = SPLIT_ALIASES.get(name)
        if split is None:
            logger.warning("Ignoring folder %s: not a split name (%s)", path, sorted(SPLIT_ALIASES))
            continue
        if split in splits:
            raise ValueError(f"Two folders in {root} map to the {split!r} split; keep one of "
                             f"{[n for n in subdirs if SPLIT_ALIASES.get(n) == split]}")
        splits[split] = Dataset.from_dict(_class_folder_rows(path, image_column, label_column))
    return DatasetDict({k: splits[k] for k in ("train", "validation", "test") if k in splits})


def _digits_folder() -> Path:
    from ftlib.data.digits import export_digits

    return export_digits()


# Image folders that are built offline on first use, by short name (as ftlib.training.checkpoints does for models).
OFFLINE_IMAGE_FOLDERS: dict[str, Callable[[], Path]] = {"sklearn-digits": _digits_folder}


def resolve_image_folder(name: str | os.PathLike) -> Path:
    """The folder for a known short name (``sklearn-digits``) unless a folder of that name exists; else `name`."""
    if str(name) in OFFLINE_IMAGE_FOLDERS and not Path(name).exists():
        return OFFLINE_IMAGE_FOLDERS[str(name)]()
    return Path(name)


def resolve_paths(dataset: Dataset, column: str, base: str | os.PathLike) -> Dataset:
    """Make relative image paths (and `~`) absolute, relative to `base` (the folder of the table naming them)."""
    base = Path(base)

    def absolute(batch: dict[str, list]) -> dict[str, list]:
        out = []
        for raw in batch[column]:
            path = Path(str(raw).strip()).expanduser() if raw is not None and str(raw).strip() else None
            out.append(None if path is None else str(path if path.is_absolute() else base / path))
        return {column: out}

    return dataset.map(absolute, batched=True, desc=f"image paths relative to {base}")


def undecoded(dataset: Dataset, column: str) -> Dataset:
    """The dataset with an `Image` column cast to `Image(decode=False)`: rows carry bytes / paths and the
    DataLoader workers decode. A column of path strings is kept; any other type is an error."""
    feature = dataset.features[column]
    if isinstance(feature, ImageFeature):
        return dataset.cast_column(column, ImageFeature(decode=False)) if feature.decode else dataset
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"Column {column!r} must hold images (an Image feature) or image paths, got {feature}")
    return dataset


def image_references(dataset: Dataset, column: str, table: str | os.PathLike | None = None) -> Dataset:
    """`dataset` with its image column undecoded (:func:`undecoded`) and, when it holds paths read from the
    file `table`, those paths made absolute relative to the file's folder (:func:`resolve_paths`)."""
    if table and getattr(dataset.features[column], "dtype", None) in ("string", "large_string"):
        dataset = resolve_paths(dataset, column, Path(table).parent)
    return undecoded(dataset, column)


def list_image_folder(root: str | os.PathLike, image_column: str = "image") -> Dataset:
    """Every image under `root` (recursive, any layout, hidden entries skipped) as a column of paths, sorted:
    the images to predict. Class sub-folders are not labels here."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    paths = [str(p) for p in _list_images(root)]
    if not paths:
        raise ValueError(f"No images found in {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return Dataset.from_dict({image_column: paths})


def load_image_data(data_args, cache_dir: str | None = None) -> DatasetDict:
    """The splits `data_args` names (`image_folder`, csv / jsonl / parquet `*_file`s, or a Hub
    `dataset_name`) with the image column undecoded and file paths absolute. Labels are left as they are."""
    if data_args.image_folder:
        return load_image_folder(resolve_image_folder(data_args.image_folder), data_args.image_column,
                                 data_args.label_column)
    raw = load_data(data_args, cache_dir)
    column = data_args.image_column
    for split in list(raw):
        if column not in raw[split].column_names:
            continue  # the shared column check names it, with the source
        table = getattr(data_args, f"{split}_file", None) if data_args.train_file else None
        raw[split] = image_references(raw[split], column, table)
    return raw


def image_ids(dataset: Dataset, column: str, batch_size: int = 1024) -> list[str]:
    """An id per row for predictions: the image's path, or the row number for an image held only as bytes.
    Reads in batches, so a column of image bytes is never loaded whole."""
    ids: list[str] = []
    for batch in dataset.with_format(None).select_columns([column]).iter(batch_size=batch_size):
        for src in batch[column]:
            path = src.get("path") if isinstance(src, Mapping) else src
            ids.append(str(path) if path else str(len(ids)))
    return ids


# ----------------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------------

class CorruptImageError(ValueError):
    """An image that cannot be opened or fully decoded; `.path` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"Corrupt or unreadable image {path}: {reason}")
        self.path = path


def _source_name(source: Any) -> str:
    if isinstance(source, Mapping):
        return str(source.get("path") or "<image bytes>")
    if isinstance(source, (bytes, bytearray)):
        return "<image bytes>"
    if isinstance(source, Image.Image):
        return getattr(source, "filename", "") or "<PIL image>"
    return str(source)


def _open_raw(source: Any) -> Image.Image:
    """PIL image from a path, bytes, a datasets Image dict ({"bytes", "path"}) or a PIL image (not loaded)."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, Mapping):
        data = source.get("bytes")
        return Image.open(io.BytesIO(data)) if data else Image.open(source["path"])
    if isinstance(source, (bytes, bytearray)):
        return Image.open(io.BytesIO(source))
    return Image.open(source)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB. Transparent pixels are composited on white (a plain convert would show
    whatever colour hides under alpha 0, often black), which suits logos/product shots."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # 16-bit/float grayscale: scale to 8 bits instead of PIL's clipping to 255 (white images).
        arr = np.asarray(im, dtype=np.float32)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_image(source: Any) -> Image.Image:
    """Decode an image fully and return it as RGB (EXIF orientation applied, alpha composited on white).

    Raises CorruptImageError naming the file for unreadable, non-image or truncated data. This relies on
    PIL's default `ImageFile.LOAD_TRUNCATED_IMAGES = False`: with True, truncated files pass padded grey."""
    name = _source_name(source)
    try:
        im = _open_raw(source)
        im.load()  # inside the try: truncation only shows up when the pixel data is decoded
        # Same as datasets' Image feature: phone photos are stored sideways plus an orientation tag.
        if im.getexif().get(0x0112) is not None:
            im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, ... for bad files
        raise CorruptImageError(name, f"{type(exc).__name__}: {exc}") from exc


def _check_decodable(source: Any) -> str | None:
    """None when the image decodes, else the reason. JPEGs decode in draft mode (1/8 scale): the whole
    entropy-coded stream is still read, so truncation is caught, while the inverse DCT is skipped."""
    try:
        im = _open_raw(source)
        if im.format == "JPEG":
            im.draft(im.mode, (1, 1))
        im.load()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure to decode is the verdict we report
        return f"{type(exc).__name__}: {exc}"


def scan_images(dataset: Dataset | DatasetDict, column: str, skip_corrupt: bool = False,
                num_threads: int | None = None, chunk_size: int = 512
                ) -> tuple[Dataset | DatasetDict, list[str]]:
    """Decode every image once before training (thread pool; PIL releases the GIL while decoding).

    skip_corrupt=False: raise CorruptImageError for the first bad row in dataset order.
    skip_corrupt=True: drop bad rows and return their names (paths) as `skipped`."""
    if isinstance(dataset, DatasetDict):
        out, skipped = {}, []
        for split, ds in dataset.items():
            out[split], bad = scan_images(ds, column, skip_corrupt, num_threads, chunk_size)
            skipped += bad
        return DatasetDict(out), skipped
    require_columns(dataset, [column], "dataset")
    plain = dataset.with_format(None)  # no user transform: we want the raw path/bytes
    threads = num_threads or min(8, available_cpus())
    keep: list[int] = []
    skipped: list[str] = []
    executor = ThreadPoolExecutor(max_workers=threads)
    try:
        # Chunks bound memory when the column holds image bytes.
        for start in range(0, len(plain), chunk_size):
            sources = plain[start:start + chunk_size][column]
            for offset, (src, reason) in enumerate(zip(sources, executor.map(_check_decodable, sources))):
                if reason is None:
                    keep.append(start + offset)
                elif not skip_corrupt:
                    raise CorruptImageError(_source_name(src), reason)
                else:
                    skipped.append(_source_name(src))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    return (dataset.select(keep) if skipped else dataset), skipped


# ----------------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------------

# PIL resample codes (what image processors store) -> torchvision modes. BOX/HAMMING have no tensor
# kernel; bilinear with antialias is the closest.
_INTERPOLATION = {0: v2.InterpolationMode.NEAREST, 1: v2.InterpolationMode.LANCZOS,
                  2: v2.InterpolationMode.BILINEAR, 3: v2.InterpolationMode.BICUBIC,
                  4: v2.InterpolationMode.BILINEAR, 5: v2.InterpolationMode.BILINEAR}
# The presets and knobs (PRESETS, KNOBS, check_knobs) live in ftlib.data.knobs, which argument parsing imports.


def _get(processor: Any, name: str, default: Any = None) -> Any:
    """Attribute of an image processor, or key of its config dict."""
    if isinstance(processor, Mapping):
        return processor.get(name, default)
    return getattr(processor, name, default)


def _size_dict(size: Any) -> dict[str, int]:
    """SizeDict / dict / int / (h, w) -> a plain dict without None values."""
    if size is None:
        return {}
    if isinstance(size, int):
        return {"height": size, "width": size}
    if isinstance(size, Sequence) and not isinstance(size, str):
        return {"height": int(size[0]), "width": int(size[-1])}
    items = size.items() if isinstance(size, Mapping) else iter(size)  # SizeDict iterates (key, value)
    return {k: v for k, v in items if v is not None}


def processor_geometry(image_processor: Any, crop_pct: float | None = None) -> dict[str, Any]:
    """Eval geometry and normalisation implied by an image processor (object or config dict).

    Returns {"resize": int (shorter side) | (h, w), "crop": (h, w) | None, "size": (h, w) output,
    "interpolation", "mean", "std"}. mean/std act on [0, 1] floats and fold in the processor's
    rescale_factor, EfficientNet's rescale_offset and include_top."""
    data_config = _get(image_processor, "data_config")  # timm wrapper
    if data_config:
        _, h, w = data_config["input_size"]
        pct = crop_pct or data_config.get("crop_pct") or 1.0
        interp = {"bicubic": 3, "bilinear": 2, "nearest": 0}.get(data_config.get("interpolation"), 3)
        return {"resize": math.floor(min(h, w) / pct), "crop": (h, w), "size": (h, w),
                "interpolation": _INTERPOLATION[interp],
                "mean": tuple(data_config["mean"]), "std": tuple(data_config["std"])}

    size = _size_dict(_get(image_processor, "size"))
    crop = _size_dict(_get(image_processor, "crop_size")) if _get(image_processor, "do_center_crop") else {}
    if "height" in crop and "width" in crop:
        resize: int | tuple[int, int] = (
            size["shortest_edge"] if "shortest_edge" in size else (size["height"], size["width"]))
        out = (crop["height"], crop["width"])
    elif "shortest_edge" in size:
        # No crop configured: crop a square anyway, batches need one shape. crop_pct (ConvNeXT,
        # PoolFormer) resizes the shorter side to edge/crop_pct first.
        edge = size["shortest_edge"]
        proc_pct = _get(image_processor, "crop_pct")
        resize = int(edge / proc_pct) if proc_pct else edge
        out = (edge, edge)
    elif "height" in size and "width" in size:
        resize, out = (size["height"], size["width"]), (size["height"], size["width"])  # plain warp (ViT)
    else:
        raise ValueError(f"Unsupported image processor size {size}; expected height/width or shortest_edge")
    if crop_pct is not None:  # explicit override: classic 'resize to size/0.875, centre crop' eval
        resize = int(min(out) / crop_pct)

    resample = _get(image_processor, "resample")
    interpolation = _INTERPOLATION.get(int(resample if resample is not None else 2), v2.InterpolationMode.BILINEAR)

    n_channels = 3
    proc_std = _get(image_processor, "image_std") or 1.0
    mean = np.broadcast_to(np.asarray(_get(image_processor, "image_mean") or 0.0, dtype=np.float64), n_channels)
    std = np.broadcast_to(np.asarray(proc_std, dtype=np.float64), n_channels)
    if not _get(image_processor, "do_normalize", True):
        mean, std = np.zeros(n_channels), np.ones(n_channels)
    do_rescale = _get(image_processor, "do_rescale", True)
    scale = 255.0 * (_get(image_processor, "rescale_factor", 1 / 255) if do_rescale else 1.0)
    offset = 1.0 if (do_rescale and _get(image_processor, "rescale_offset", False)) else 0.0
    # Processor: ((p*rf - offset) - m) / s [/ s again with include_top]; we see x = p/255 in [0, 1].
    extra = (np.broadcast_to(np.asarray(proc_std, dtype=np.float64), n_channels)
             if _get(image_processor, "include_top", False) else np.ones(n_channels))
    return {"resize": resize, "crop": out if resize != out else None, "size": out,
            "interpolation": interpolation,
            "mean": tuple(float(v) for v in (offset + mean) / scale),
            "std": tuple(float(v) for v in std * extra / scale)}


def resize_processor(image_processor: Any, image_size: int) -> Any:
    """A copy of `image_processor` whose output is `image_size` x `image_size`, its resize-to-crop ratio kept
    (shorter side 256 before a 224 crop becomes 73 before a 64 crop). Save this copy with the model, so that
    inference preprocesses as training did."""
    from transformers.image_utils import SizeDict

    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if _get(image_processor, "data_config"):
        raise ValueError("image_size cannot be changed on a timm image processor; change the model's input size")
    proc = copy.deepcopy(image_processor)
    size = _size_dict(_get(proc, "size"))
    crop = _size_dict(_get(proc, "crop_size")) if _get(proc, "do_center_crop") else {}
    if "height" in crop and "width" in crop:
        if "shortest_edge" in size:
            new_size = SizeDict(shortest_edge=round(image_size * size["shortest_edge"] / min(crop.values())))
        else:
            new_size = SizeDict(height=round(image_size * size["height"] / crop["height"]),
                                width=round(image_size * size["width"] / crop["width"]))
        proc.crop_size = SizeDict(height=image_size, width=image_size)
    elif "shortest_edge" in size:
        new_size = SizeDict(shortest_edge=image_size)  # a processor's crop_pct (ConvNeXt) keeps its ratio
    elif "height" in size and "width" in size:
        new_size = SizeDict(height=image_size, width=image_size)
    else:
        raise ValueError(f"Unsupported image processor size {size}; expected height/width or shortest_edge")
    proc.size = new_size
    return proc


def build_transforms(image_processor: Any, preset: str = "standard", train: bool = True,
                     **overrides: Any) -> Callable[[Image.Image], torch.Tensor]:
    """RGB PIL image -> normalised float32 [3, H, W] tensor, sized from the checkpoint's image processor.

    train=False (or preset "none") is deterministic: resize + centre crop (as the processor does) +
    normalise. Presets: light = RandomResizedCrop + hflip; standard = + rotation + ColorJitter;
    strong = + TrivialAugmentWide/RandAugment (`auto_augment`) + RandomErasing. Keyword overrides
    (see KNOBS) change any knob on top of the preset."""
    knobs = check_knobs(preset, overrides)
    geo = processor_geometry(image_processor, knobs["crop_pct"])
    interp = geo["interpolation"]
    # Geometry runs on uint8 tensors: the same kernels as the HF torchvision-backend processors.
    steps: list[Callable] = [v2.ToImage()]
    if train and knobs["crop_scale"] is not None:
        steps.append(v2.RandomResizedCrop(geo["size"], scale=tuple(knobs["crop_scale"]),
                                          ratio=tuple(knobs["crop_ratio"]), interpolation=interp, antialias=True))
    else:
        steps.append(v2.Resize(geo["resize"], interpolation=interp, antialias=True))
        if geo["crop"] is not None:
            steps.append(v2.CenterCrop(geo["crop"]))
    if train:
        if knobs["hflip"]:
            steps.append(v2.RandomHorizontalFlip(knobs["hflip"]))
        if knobs["vflip"]:
            steps.append(v2.RandomVerticalFlip(knobs["vflip"]))
        if knobs["rotation"]:
            steps.append(v2.RandomRotation(knobs["rotation"], interpolation=v2.InterpolationMode.BILINEAR))
        cj = knobs["color_jitter"]
        if cj:
            b, c, s, h = (cj, cj, cj, 0.0) if isinstance(cj, (int, float)) else tuple(cj)
            steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h or None))
        if knobs["auto_augment"] == "trivial":
            steps.append(v2.TrivialAugmentWide(interpolation=v2.InterpolationMode.BILINEAR))
        elif knobs["auto_augment"] == "rand":
            steps.append(v2.RandAugment(num_ops=2, magnitude=int(knobs["rand_magnitude"]),
                                        interpolation=v2.InterpolationMode.BILINEAR))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(geo["mean"]), list(geo["std"]))]
    if train and knobs["erasing"]:
        steps.append(v2.RandomErasing(p=knobs["erasing"], value=0.0))  # 0 after Normalize = mean colour
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


class ImageTransform:
    """Batch transform for `Dataset.with_transform`: decode + transform the image column into
    `pixel_values`; `labels` (already encoded, ``ftlib.data.labels.encode_labels``) pass through.

    A class rather than a closure so that it pickles into spawned DataLoader workers."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], image_column: str):
        self.transform = transform
        self.image_column = image_column

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {
            "pixel_values": [self.transform(open_image(src)) for src in batch[self.image_column]]}
        if "labels" in batch:  # unlabeled prediction sets have none
            out["labels"] = batch["labels"]
        return out


# ----------------------------------------------------------------------------------------------------
# Batching: plain collate, MixUp / CutMix
# ----------------------------------------------------------------------------------------------------

def image_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack pixel_values and labels (int ids -> long [B]; multi-hot / soft vectors -> float [B, C])."""
    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
    if "labels" in features[0]:
        labels = [f["labels"] for f in features]
        if isinstance(labels[0], torch.Tensor):
            batch["labels"] = torch.stack(labels).float() if labels[0].ndim else torch.stack(labels).long()
        elif isinstance(labels[0], (list, tuple, np.ndarray)):
            batch["labels"] = torch.tensor(np.asarray(labels, dtype=np.float32))
        else:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
    return batch


class MixupCutmix:
    """MixUp / CutMix (a random choice of the two when both are on) on a collated training batch.

    Pass it as ``FtTrainer(train_batch_transform=...)``: it then sees training batches only, never the
    evaluation ones. Labels come out soft, float [B, num_classes] (one-hot when a batch is left unmixed,
    with probability 1 - prob); ``FtTrainer.compute_loss`` takes such targets (cross-entropy on
    probabilities; BCE for multi-hot multi-label targets, which are mixed the same way)."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0):
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if mixup_alpha < 0 or cutmix_alpha < 0 or (mixup_alpha == 0 and cutmix_alpha == 0):
            raise ValueError(f"Need mixup_alpha or cutmix_alpha > 0 (and none negative), got "
                             f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob must be in [0, 1], got {prob}")
        self.num_classes = num_classes
        self.prob = prob
        mixers = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) + \
                 ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])
        self.mix = mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = dict(batch)
        labels = batch["labels"]
        if torch.rand(()).item() < self.prob:
            batch["pixel_values"], batch["labels"] = self.mix(batch["pixel_values"], labels)
        elif labels.ndim == 1:
            batch["labels"] = F.one_hot(labels, self.num_classes).float()
        return batch
