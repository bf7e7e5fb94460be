"""Image-classification data pieces: loading, safe decoding, transforms, MixUp/CutMix, worker count.

Loaders return a `datasets.DatasetDict` whose rows hold an image *reference* and a label, never decoded
pixels: local sources give columns `image_path` (str) and `label`; a Hub dataset gives `image` (an
`Image(decode=False)` dict of bytes/path) and `label`. Decoding happens lazily, per batch, inside the
DataLoader workers through `make_transform_fn` + `Dataset.set_transform`.

Labels are class names (str; a sorted list of names for multi-label) except for a Hub `ClassLabel`
column, whose integer ids are kept. Split names are `train`, `validation` (from `val`, `valid` or
`validation`) and `test`.

Note for the Trainer wiring: `Dataset.set_transform` needs `remove_unused_columns=False`, otherwise the
Trainer drops `image_path`/`label` before the transform sees them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from datasets import ClassLabel, Dataset, DatasetDict
from datasets import Image as ImageFeature
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split
from torchvision.transforms import v2

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


def _class_folder_rows(folder: Path) -> dict[str, list[str]]:
    """`folder/<class>/**/<image>` -> columns image_path, label; ValueError when no image is found."""
    paths: list[str] = []
    labels: list[str] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in _list_images(class_dir):
            paths.append(str(f))
            labels.append(class_dir.name)
    if not paths:
        raise ValueError(f"No images found in {folder} (expected {folder}/<class>/<image>)")
    return {"image_path": paths, "label": labels}


def stratified_split(dataset: Dataset, label_column: str = "label", val_fraction: float = 0.1,
                     seed: int = 42, multi_label: bool = False) -> DatasetDict:
    """Split one Dataset into train/validation, stratified on the label (seeded, order-stable).

    Multi-label rows cannot be stratified by sklearn, so they are split at random (seeded)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = list(dataset[label_column])  # datasets 5 returns a lazy Column
    stratify = None
    if not multi_label:
        counts: dict[Any, int] = {}
        for lab in labels:
            counts[lab] = counts.get(lab, 0) + 1
        rare = sorted(str(k) for k, c in counts.items() if c < 2)
        if rare:
            raise ValueError(f"Cannot make a stratified validation split: class(es) {rare} have fewer than "
                             f"2 images; add images or provide a validation split")
        stratify = labels
    train_idx, val_idx = train_test_split(np.arange(len(dataset)), test_size=val_fraction,
                                          random_state=seed, stratify=stratify)
    # Sorted indices keep the original (sorted-path) order inside each split.
    return DatasetDict(train=dataset.select(np.sort(train_idx)), validation=dataset.select(np.sort(val_idx)))


def load_image_folder(root: str | os.PathLike, val_fraction: float = 0.1, seed: int = 42) -> DatasetDict:
    """List an imagefolder tree into columns `image_path`, `label` (class folder name), without decoding.

    Layouts: `root/<class>/*` (seeded stratified train/validation split) or
    `root/{train,val|valid|validation,test}/<class>/*` (validation made from train when absent)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder not found: {root}")
    subdirs = {p.name: p for p in root.iterdir() if p.is_dir()}
    if "train" not in subdirs:
        dsd = stratified_split(Dataset.from_dict(_class_folder_rows(root)), "label", val_fraction, seed)
    else:
        splits: dict[str, Dataset] = {}
        for name, path in sorted(subdirs.items()):
            split = SPLIT_ALIASES.get(name)
            if split is None:
                logger.warning("Ignoring folder %s: not a split name (%s)", path, sorted(SPLIT_ALIASES))
                continue
            if split in splits:
                raise ValueError(f"Two folders in {root} map to the {split!r} split; keep one of "
                                 f"{[n for n in subdirs if SPLIT_ALIASES.get(n) == split]}")
            splits[split] = Dataset.from_dict(_class_folder_rows(path))
        if "validation" not in splits:
            splits.update(stratified_split(splits["train"], "label", val_fraction, seed))
        dsd = DatasetDict({k: splits[k] for k in ("train", "validation", "test") if k in splits})
    label_names(dsd, "label")  # fails naming any validation/test class unseen in train
    return dsd


def _require_columns(columns: Iterable[str], required: Iterable[str], where: str) -> None:
    columns = list(columns)
    for col in required:
        if col not in columns:
            raise ValueError(f"Column {col!r} not found in {where}; available columns: {columns}")


def _read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a .csv/.tsv (values str) or .jsonl/.json (one object a line, or a JSON list)."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    elif suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        columns = list(rows[0]) if rows else []
    else:
        raise ValueError(f"Unsupported table format {suffix!r} for {path}; use .csv, .tsv, .jsonl or .json")
    if not rows:
        raise ValueError(f"No rows in {path}")
    return columns, rows


def _parse_label(value: Any, multi_label: bool, label_sep: str, where: str) -> str | list[str]:
    if multi_label:
        if value is None:
            return []
        items = value if isinstance(value, list) else str(value).split(label_sep)
        return sorted({str(v).strip() for v in items if str(v).strip()})
    if isinstance(value, list) or value is None or str(value).strip() == "":
        raise ValueError(f"{where}: expected one label, got {value!r} (set multi_label for lists)")
    return str(value).strip()


def _table_split(path: Path, image_column: str, label_column: str, multi_label: bool,
                 label_sep: str) -> Dataset:
    columns, rows = _read_table(path)
    _require_columns(columns, [image_column, label_column], str(path))
    base = path.parent
    paths, labels = [], []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 1}"
        raw = row.get(image_column)
        if raw is None or str(raw).strip() == "":
            raise ValueError(f"{where}: empty {image_column!r}")
        p = Path(str(raw).strip()).expanduser()
        paths.append(str(p if p.is_absolute() else base / p))  # relative paths are relative to the table
        labels.append(_parse_label(row.get(label_column), multi_label, label_sep, where))
    return Dataset.from_dict({"image_path": paths, "label": labels})


def load_image_table(train_file: str | os.PathLike, validation_file: str | os.PathLike | None = None,
                     test_file: str | os.PathLike | None = None, *, image_column: str = "image",
                     label_column: str = "label", multi_label: bool = False, label_sep: str = ";",
                     val_fraction: float = 0.1, seed: int = 42) -> DatasetDict:
    """Read csv/tsv/jsonl tables of (image path, label) into columns `image_path`, `label`.

    Relative paths resolve against each table's folder. Multi-label values are a JSON list or a
    `label_sep`-separated string (stored as sorted unique names). Without `validation_file` a seeded
    (stratified for single-label) validation split is taken from train."""
    args = (image_column, label_column, multi_label, label_sep)
    splits = {"train": _table_split(Path(train_file), *args)}
    if validation_file is not None:
        splits["validation"] = _table_split(Path(validation_file), *args)
    else:
        splits.update(stratified_split(splits["train"], "label", val_fraction, seed, multi_label))
    if test_file is not None:
        splits["test"] = _table_split(Path(test_file), *args)
    dsd = DatasetDict(splits)
    label_names(dsd, "label", multi_label)
    return dsd


def prepare_hub_dataset(data: DatasetDict | Dataset, image_column: str = "image", label_column: str = "label",
                        *, multi_label: bool = False, val_fraction: float = 0.1, seed: int = 42) -> DatasetDict:
    """Normalise an already-loaded Hub dataset to columns `image` (undecoded) and `label`.

    The image column (an `Image` feature, or str paths) is cast to `Image(decode=False)` so rows carry
    bytes/paths and the workers decode. Split aliases are renamed; validation is made from train when
    absent. A ClassLabel label column keeps its integer ids."""
    if isinstance(data, Dataset):
        data = DatasetDict(train=data)
    splits: dict[str, Dataset] = {}
    for name, ds in data.items():
        split = SPLIT_ALIASES.get(name, name)
        _require_columns(ds.column_names, [image_column, label_column], f"split {name!r}")
        ds = ds.select_columns([image_column, label_column])
        feature = ds.features[image_column]
        if isinstance(feature, ImageFeature):
            ds = ds.cast_column(image_column, ImageFeature(decode=False))
        elif getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise ValueError(f"Column {image_column!r} must be an Image feature or str paths, got {feature}")
        if image_column != "image":
            ds = ds.rename_column(image_column, "image")
        if label_column != "label":
            ds = ds.rename_column(label_column, "label")
        if len(ds) == 0:
            raise ValueError(f"Split {name!r} is empty")
        splits[split] = ds
    if "train" not in splits:
        raise ValueError(f"No train split; splits: {list(data)}")
    if "validation" not in splits:
        splits.update(stratified_split(splits["train"], "label", val_fraction, seed, multi_label))
    order = ["train", "validation", "test"] + sorted(set(splits) - {"train", "validation", "test"})
    dsd = DatasetDict({k: splits[k] for k in order if k in splits})
    label_names(dsd, "label", multi_label)
    return dsd


def _class_label(feature: Any) -> ClassLabel | None:
    """The ClassLabel of a label feature (plain, or the element of a multi-label list), else None."""
    if isinstance(feature, ClassLabel):
        return feature
    inner = getattr(feature, "feature", None)
    return inner if isinstance(inner, ClassLabel) else None


def label_names(data: DatasetDict, label_column: str = "label", multi_label: bool = False) -> list[str]:
    """Class names: ClassLabel names, else the sorted names seen in train.

    Raises ValueError naming any validation/test label that never occurs in train."""
    train = data["train"]
    cl = _class_label(train.features[label_column])
    if cl is not None:
        return list(cl.names)

    def seen(ds: Dataset) -> set[str]:
        values = list(ds[label_column])
        return {v for vs in values for v in vs} if multi_label else set(values)

    names = seen(train)
    for split, ds in data.items():
        if split == "train":
            continue
        unseen = sorted(seen(ds) - names)
        if unseen:
            raise ValueError(f"Label(s) {unseen} in split {split!r} never occur in train "
                             f"(train classes: {sorted(names)})")
    return sorted(names)


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
    _require_columns(dataset.column_names, [column], "dataset")
    plain = dataset.with_format(None)  # no user transform: we want the raw path/bytes
    threads = num_threads or min(8, _available_cpus())
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


def _check_knobs(preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
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


def build_transforms(image_processor: Any, preset: str = "standard", train: bool = True,
                     **overrides: Any) -> Callable[[Image.Image], torch.Tensor]:
    """RGB PIL image -> normalised float32 [3, H, W] tensor, sized from the checkpoint's image processor.

    train=False (or preset "none") is deterministic: resize + centre crop (as the processor does) +
    normalise. Presets: light = RandomResizedCrop + hflip; standard = + rotation + ColorJitter;
    strong = + TrivialAugmentWide/RandAugment (`auto_augment`) + RandomErasing. Keyword overrides
    (see KNOBS) change any knob on top of the preset."""
    knobs = _check_knobs(preset, overrides)
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


class ImageTransformFn:
    """Batch transform for `Dataset.set_transform`: decode + transform -> pixel_values, labels.

    A class rather than a closure so that it pickles into spawned DataLoader workers."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], image_column: str,
                 label2id: Mapping[str, int], multi_label: bool = False, label_column: str = "label"):
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.label2id = dict(label2id)
        self.multi_label = multi_label

    def _id(self, label: str | int) -> int:
        if isinstance(label, (int, np.integer)):
            return int(label)  # ClassLabel ids pass through
        try:
            return self.label2id[label]
        except KeyError:
            raise ValueError(f"Label {label!r} is not in label2id ({sorted(self.label2id)})") from None

    def _target(self, label: Any) -> int | torch.Tensor:
        if not self.multi_label:
            return self._id(label)
        target = torch.zeros(len(self.label2id), dtype=torch.float32)
        for lab in label:
            target[self._id(lab)] = 1.0
        return target

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {
            "pixel_values": [self.transform(open_image(src)) for src in batch[self.image_column]]}
        if self.label_column in batch:  # unlabeled prediction sets have no labels
            out["labels"] = [self._target(lab) for lab in batch[self.label_column]]
        return out


def make_transform_fn(transform: Callable[[Image.Image], torch.Tensor], image_column: str,
                      label2id: Mapping[str, int], multi_label: bool = False,
                      label_column: str = "label") -> ImageTransformFn:
    """Function for `Dataset.set_transform`: rows -> {"pixel_values": [3,H,W] tensors, "labels": int
    ids, or float multi-hot [C] vectors when multi_label}."""
    return ImageTransformFn(transform, image_column, label2id, multi_label, label_column)


# ----------------------------------------------------------------------------------------------------
# Batching: plain collate, MixUp / CutMix, soft-target loss
# ----------------------------------------------------------------------------------------------------

def image_collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack pixel_values and labels (int ids -> long [B]; multi-hot/soft -> float [B, C])."""
    batch = {"pixel_values": torch.stack([f["pixel_values"] for f in features])}
    if "labels" in features[0]:
        labels = [f["labels"] for f in features]
        batch["labels"] = (torch.stack(labels).float() if isinstance(labels[0], torch.Tensor)
                           else torch.tensor(labels, dtype=torch.long))
    return batch


class MixupCutmixCollator:
    """Data collator applying torchvision's MixUp / CutMix (RandomChoice when both) to the batch.

    Labels always come out soft: float [B, num_classes] (one-hot when a batch is not mixed, p=1-prob),
    so the loss must accept probability targets. transformers' built-in classification loss does not
    (problem_type "single_label_classification" flattens labels with .view(-1) and fails; problem_type
    None picks BCE for float labels): compute the loss with `soft_target_cross_entropy`. Use this only
    for the training loader; evaluation batches need `image_collate` (int labels, unmixed). Multi-hot
    float labels (multi-label) are mixed the same way, for a BCE loss."""

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

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = image_collate(features)
        labels = batch["labels"]
        if torch.rand(()).item() < self.prob:
            batch["pixel_values"], batch["labels"] = self.mix(batch["pixel_values"], labels)
        elif labels.ndim == 1:
            batch["labels"] = F.one_hot(labels, self.num_classes).float()
        return batch


def soft_target_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for int class ids [B] or probability targets [B, C] (MixUp/CutMix, label smoothing)."""
    return F.cross_entropy(logits, labels.to(logits.dtype) if labels.is_floating_point() else labels)


# ----------------------------------------------------------------------------------------------------
# Workers
# ----------------------------------------------------------------------------------------------------

def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset / container CPU sets
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_num_workers(max_workers: int = 8) -> int:
    """DataLoader workers for image decoding: the CPUs this process may use, shared among the local
    processes of a distributed launch (LOCAL_WORLD_SIZE), minus one for the main process, capped."""
    local_procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(max_workers, _available_cpus() // local_procs - 1))
