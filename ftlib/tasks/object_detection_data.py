"""Object detection data: COCO-format json files (or a Hub dataset of ``image`` + ``objects``) read and checked
before any step, box-aware augmentation (torchvision.transforms.v2), the image processor's resizing and
normalisation per image, batches padded with a pixel mask, and detections back in original image coordinates.

Rows of the prepared dataset: ``image`` (a path, or a Hub image), ``image_id``, ``file_name``, ``boxes`` (COCO
[x, y, w, h] in pixels), ``labels`` (contiguous label ids), ``area``. Categories map to label ids 0..K-1 in the order
of their ids (COCO's 1..90 with gaps); ``categories.json`` in the output folder maps them back.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from ftlib.data.image import open_image

logger = logging.getLogger("ftlib.detection")

CATEGORIES_FILE = "categories.json"


# -- reading and checking COCO json --------------------------------------------------------------------------------

@dataclass
class CocoData:
    """One json's images and boxes, checked: ``dataset`` (rows as in the module docstring), ``categories`` (the
    label space, ``[{"id", "name"}]`` in label order) and what was adjusted (clipped boxes, negatives, dropped)."""

    dataset: Dataset
    categories: list[dict]
    clipped: int = 0
    negatives: int = 0
    dropped_classes: int = 0
    dropped_crowd: int = 0
    notes: list[str] = field(default_factory=list)

    def log(self, name: str) -> None:
        counts = [f"{len(self.dataset)} images", f"{sum(len(b) for b in self.dataset['boxes'])} boxes"]
        if self.negatives:
            counts.append(f"{self.negatives} images without boxes kept as negatives")
        if self.clipped:
            counts.append(f"{self.clipped} boxes up to the tolerance outside their image clipped to it")
        if self.dropped_classes:
            counts.append(f"{self.dropped_classes} boxes of other categories dropped (--classes)")
        if self.dropped_crowd:
            counts.append(f"{self.dropped_crowd} crowd (iscrowd=1) regions dropped")
        logger.info("%s: %s", name, "; ".join(counts))


def default_image_folder(json_path: Path) -> Path:
    """The json's folder + images/ when it exists, else the json's folder."""
    images = json_path.parent / "images"
    return images if images.is_dir() else json_path.parent


def label_space(categories: list[dict], classes: Sequence[str] | None, source: str) -> list[dict]:
    """The categories kept (``--classes`` by name), in the order of their ids: label id k is the k-th."""
    ids = [c.get("id") for c in categories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: categories repeat an id ({sorted(i for i in ids if ids.count(i) > 1)[:5]})")
    kept = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in categories), key=lambda c: c["id"])
    if classes:
        names = {c["name"] for c in kept}
        unknown = [name for name in classes if name not in names]
        if unknown:
            raise ValueError(f"--classes {', '.join(unknown)}: not among the categories of {source} "
                             f"({', '.join(sorted(names)[:20])}{' ...' if len(names) > 20 else ''})")
        kept = [c for c in kept if c["name"] in classes]
    if not kept:
        raise ValueError(f"{source}: no categories")
    return kept


def _clip_box(box, width: float, height: float, tolerance: float, where: str) -> tuple[list[float], bool]:
    """A COCO box checked against its image: non-positive sizes and boxes further than ``tolerance`` outside are
    errors naming ``where``; a box up to it outside is clipped. Returns ``(box, clipped)``."""
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise ValueError(f"{where}: bbox {box!r} is not [x, y, width, height]")
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: bbox {list(box)} has a non-positive width or height")
    x2, y2 = x + w, y + h
    if x < -tolerance or y < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
        raise ValueError(f"{where}: bbox {list(box)} (x, y, w, h) lies outside the {width:g}x{height:g} image "
                         f"(more than --box_tolerance {tolerance:g} px)")
    cx, cy, cx2, cy2 = max(0.0, x), max(0.0, y), min(width, x2), min(height, y2)
    clipped = (cx, cy, cx2, cy2) != (x, y, x2, y2)
    if cx2 - cx <= 0 or cy2 - cy <= 0:
        raise ValueError(f"{where}: bbox {list(box)} has no area inside the {width:g}x{height:g} image")
    return [cx, cy, cx2 - cx, cy2 - cy], clipped


def read_coco(path: str | Path, image_folder: str | Path | None, categories: list[dict] | None,
              classes: Sequence[str] | None = None, tolerance: float = 1.0) -> CocoData:
    """Read and check a COCO-format json: every annotation's image, category and box (errors name the file, the
    annotation id, the image and the box). ``categories``: the label space (the training json's); None takes this
    json's (``classes`` applied). A json without ``annotations`` is images to predict."""
    path = Path(path)
    source = str(path)
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{source}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{source} is not a COCO json: {err}") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ValueError(f"{source} is not a COCO json: it needs an 'images' list (and 'annotations', 'categories')")  # noqa: TRY004 (bad file content, a ValueError like every other input error)
    folder = Path(image_folder) if image_folder else default_image_folder(path)
    if categories is None and not coco.get("annotations") and not coco.get("categories"):
        categories = []  # images to predict
    elif categories is None:
        if not isinstance(coco.get("categories"), list):
            raise ValueError(f"{source}: no 'categories' list (the label names)")
        categories = label_space(coco["categories"], classes, source)
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    known = {int(c["id"]) for c in coco.get("categories") or []} | set(label_of)
    images: dict[Any, dict] = {}
    for image in coco["images"]:
        if "id" not in image or "file_name" not in image:
            raise ValueError(f"{source}: image entry {image!r} needs 'id' and 'file_name'")
        if image["id"] in images:
            raise ValueError(f"{source}: image id {image['id']} appears twice")
        file = folder / image["file_name"]
        if not file.is_file():
            raise ValueError(f"{source}: image {image['id']} file {file} does not exist (--image_folder {folder})")
        images[image["id"]] = {"image": str(file), "image_id": image["id"], "file_name": image["file_name"],
                               "width": image.get("width"), "height": image.get("height"),
                               "boxes": [], "labels": [], "area": []}
    _fill_sizes(images.values(), source)
    data = CocoData(Dataset.from_list([]), categories)
    for ann in coco.get("annotations") or []:
        ann_id = ann.get("id", "?")
        image = images.get(ann.get("image_id"))
        if image is None:
            raise ValueError(f"{source}: annotation {ann_id} points at image id {ann.get('image_id')!r}, which is not "
                             "in 'images'")
        where = f"{source}: annotation {ann_id} (image {image['file_name']})"
        category = ann.get("category_id")
        if category not in known:
            raise ValueError(f"{where}: category_id {category!r} is not in the categories "
                             f"({', '.join(str(i) for i in sorted(known)[:20])})")
        if category not in label_of:
            data.dropped_classes += 1
            continue
        if ann.get("iscrowd", 0):
            data.dropped_crowd += 1
            continue
        box, clipped = _clip_box(ann.get("bbox"), image["width"], image["height"], tolerance, where)
        data.clipped += clipped
        image["boxes"].append(box)
        image["labels"].append(label_of[category])
        image["area"].append(float(ann["area"]) if ann.get("area") and not clipped else box[2] * box[3])
    rows = list(images.values())
    data.negatives = sum(not row["boxes"] for row in rows)
    data.dataset = Dataset.from_list(rows) if rows else Dataset.from_dict(
        {k: [] for k in ("image", "image_id", "file_name", "width", "height", "boxes", "labels", "area")})
    return data


def _fill_sizes(images, source: str) -> None:
    """Each image's size from its file's header where the json gives none; a size that disagrees is an error."""
    from PIL import Image

    from ftlib.data.image import CorruptImageError

    for image in images:
        try:
            with Image.open(image["image"]) as handle:
                width, height = handle.size
        except Exception as err:  # noqa: BLE001 - any failure to read the header names the file
            raise CorruptImageError(image["image"], f"{type(err).__name__}: {err}") from None
        given = (image["width"], image["height"])
        if None in given:
            image["width"], image["height"] = width, height
        elif tuple(map(float, given)) != (width, height):
            raise ValueError(f"{source}: image {image['image_id']} ({image['file_name']}) is {width}x{height}, the "
                             f"json says {given[0]}x{given[1]}")


def hub_rows(dataset: Dataset, image_column: str, objects_column: str, classes: Sequence[str] | None,
             tolerance: float, categories: list[dict] | None = None, source: str = "dataset") -> CocoData:
    """A Hub dataset in transformers' object-detection example layout (``image``; ``objects`` with ``bbox`` xywh,
    ``category``, ``area``, ``id``) as the rows :func:`read_coco` gives; category names from its ClassLabel."""
    from datasets import Image as ImageFeature

    for column in (image_column, objects_column):
        if column not in dataset.column_names:
            raise ValueError(f"{source}: no column '{column}' (columns: {', '.join(dataset.column_names)})")
    feature = dataset.features[objects_column]
    category_feature = (feature.get("category") if isinstance(feature, dict) else None)
    inner = getattr(category_feature, "feature", category_feature)
    names = list(getattr(inner, "names", None) or [])
    plain = dataset.cast_column(image_column, ImageFeature(decode=False)) \
        if isinstance(dataset.features[image_column], ImageFeature) else dataset
    objects = plain[objects_column]
    if not names:
        names = [str(c) for c in sorted({c for obj in objects for c in obj["category"]})]
        ids = sorted({c for obj in objects for c in obj["category"]})
        all_categories = [{"id": i, "name": str(i)} for i in ids]
    else:
        all_categories = [{"id": i, "name": n} for i, n in enumerate(names)]
    if categories is None:
        categories = label_space(all_categories, classes, source)
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    data = CocoData(Dataset.from_list([]), categories)
    rows = []
    for index, (image, obj) in enumerate(zip(plain[image_column], objects)):
        opened = open_image(image)
        width, height = opened.size
        row = {"image": image, "image_id": index, "file_name": str((image or {}).get("path") or index)
               if isinstance(image, dict) else str(image), "width": width, "height": height, "boxes": [], "labels": [],
               "area": []}
        for k, (box, category) in enumerate(zip(obj["bbox"], obj["category"])):
            ann_id = obj["id"][k] if obj.get("id") else k
            where = f"{source}: row {index} object {ann_id}"
            if category not in label_of:
                if category not in {c["id"] for c in all_categories}:
                    raise ValueError(f"{where}: category {category!r} is not among the dataset's categories")
                data.dropped_classes += 1
                continue
            clipped_box, clipped = _clip_box(list(box), width, height, tolerance, where)
            data.clipped += clipped
            row["boxes"].append(clipped_box)
            row["labels"].append(label_of[category])
            areas = obj.get("area")
            row["area"].append(float(areas[k]) if areas and not clipped else clipped_box[2] * clipped_box[3])
        rows.append(row)
    data.negatives = sum(not row["boxes"] for row in rows)
    data.dataset = Dataset.from_list(rows)
    return data


def write_categories(output_dir: str | Path, categories: list[dict]) -> Path:
    """``categories.json``: label id k -> the data's category ``{"id", "name"}`` (COCO ids for predictions)."""
    path = Path(output_dir) / CATEGORIES_FILE
    path.write_text(json.dumps([{"label": k, **c} for k, c in enumerate(categories)], indent=1) + "\n", encoding="utf-8")
    return path


def read_categories(folder: str | Path, id2label: dict) -> list[int]:
    """The original category id of every label id (``categories.json``; without it, the label ids)."""
    path = Path(folder) / CATEGORIES_FILE
    if path.is_file():
        return [int(c["id"]) for c in json.loads(path.read_text(encoding="utf-8"))]
    return list(range(len(id2label)))


# -- augmentation, preprocessing, batches -------------------------------------------------------------------------

def augmentation(preset: str):
    """The training transform of a preset (torchvision.transforms.v2 on an image and its ``BoundingBoxes``), ending
    with boxes clamped to the image and those that left it or collapsed (under 1 px) dropped; None for ``none``."""
    from torchvision.transforms import v2

    if preset == "none":
        return None
    steps = [v2.RandomHorizontalFlip(0.5)]
    if preset == "light":
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    elif preset == "standard":
        steps += [v2.RandomPhotometricDistort(p=0.5),
                  # a random scale of 0.7-1.4 and a shift of up to 15%: zoomed in, the image is cropped
                  v2.RandomApply([v2.RandomAffine(degrees=0, translate=(0.15, 0.15), scale=(0.7, 1.4))], p=0.6)]
    else:
        raise ValueError(f"unknown augmentation preset {preset!r}")
    return v2.Compose([*steps, v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)])


def augment(transform, image, boxes: list, labels: list):
    """``(image, boxes xywh, labels)`` after ``transform`` (see :func:`augmentation`)."""
    from torchvision import tv_tensors
    from torchvision.ops import box_convert

    width, height = image.size
    xyxy = box_convert(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy")
    target = {"boxes": tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(height, width)),
              "labels": torch.tensor(labels, dtype=torch.int64)}
    image, target = transform(image, target)
    xywh = box_convert(target["boxes"].as_subclass(torch.Tensor), "xyxy", "xywh")
    return image, xywh.tolist(), target["labels"].tolist()


class DetectionTransform:
    """Rows -> ``pixel_values`` (the processor's resize and normalisation, unpadded) and ``labels`` (the processor's
    targets: class ids, boxes as centre x, y, width, height relative to the image, the original size), with the
    training augmentation when given; for ``datasets.Dataset.with_transform`` (runs in the DataLoader workers)."""

    def __init__(self, processor, transform=None, image_column: str = "image"):
        self.processor, self.transform, self.image_column = processor, transform, image_column

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        pixel_values, targets = [], []
        for i, source in enumerate(batch[self.image_column]):
            image = open_image(source)
            boxes, labels = batch["boxes"][i], batch["labels"][i]
            areas = batch["area"][i]
            if self.transform is not None:
                image, boxes, labels = augment(self.transform, image, boxes, labels)
                areas = [w * h for _, _, w, h in boxes]
            annotation = {"image_id": i, "annotations": [
                {"bbox": box, "category_id": label, "area": area, "iscrowd": 0}
                for box, label, area in zip(boxes, labels, areas)]}
            encoded = self.processor(images=[image], annotations=[annotation], do_pad=False, return_tensors="pt")
            pixel_values.append(encoded["pixel_values"][0])
            target = encoded["labels"][0]
            targets.append({k: target[k] for k in ("class_labels", "boxes", "orig_size")})
        return {"pixel_values": pixel_values, "labels": targets}


class ImagesOnly:
    """Images (paths or Hub images) -> ``pixel_values`` and their original size, for prediction."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, source) -> dict:
        image = open_image(source)
        encoded = self.processor(images=[image], do_pad=False, return_tensors="pt")
        return {"pixel_values": encoded["pixel_values"][0], "orig_size": torch.tensor([image.height, image.width])}


def pad_batch(features: list[dict]) -> dict[str, Any]:
    """Images padded (bottom and right, zeros) to the batch's largest height and width, with ``pixel_mask`` (1 on the
    image, 0 on the padding); boxes stay relative to each unpadded image, as DETR's models expect."""
    height = max(f["pixel_values"].shape[1] for f in features)
    width = max(f["pixel_values"].shape[2] for f in features)
    pixels = torch.zeros(len(features), features[0]["pixel_values"].shape[0], height, width)
    mask = torch.zeros(len(features), height, width, dtype=torch.long)
    for i, f in enumerate(features):
        _, h, w = f["pixel_values"].shape
        pixels[i, :, :h, :w] = f["pixel_values"]
        mask[i, :h, :w] = 1
    batch = {"pixel_values": pixels, "pixel_mask": mask}
    if "labels" in features[0]:
        batch["labels"] = [f["labels"] for f in features]
    if "orig_size" in features[0]:
        batch["orig_size"] = torch.stack([f["orig_size"] for f in features])
    return batch


# -- detections -----------------------------------------------------------------------------------------------------

def postprocess(processor, outputs, sizes, threshold: float = 0.0, top_k: int = 100) -> list[dict]:
    """The processor's ``post_process_object_detection`` (boxes x1, y1, x2, y2 in original pixels, ``sizes``
    [height, width] per image), the ``top_k`` best per image."""
    import inspect

    kwargs = {"threshold": threshold, "target_sizes": sizes}
    if "top_k" in inspect.signature(processor.post_process_object_detection).parameters:
        kwargs["top_k"] = top_k
    results = processor.post_process_object_detection(outputs, **kwargs)
    out = []
    for result in results:
        order = result["scores"].argsort(descending=True)[:top_k]
        out.append({k: result[k][order].detach().float().cpu() if k != "labels" else result[k][order].cpu()
                    for k in ("boxes", "scores", "labels")})
    return out


def detect(model, processor, images: Sequence, *, batch_size: int = 4, device: str = "cpu", threshold: float = 0.05,
           num_workers: int = 0, progress: bool = False, top_k: int = 100) -> list[dict]:
    """Detections for each image (``boxes`` xyxy in its pixels, ``scores``, ``labels``), in order."""
    from torch.utils.data import DataLoader

    from ftlib.tasks.base import inference_batches

    class _Images(torch.utils.data.Dataset):
        def __init__(self, sources):
            self.sources, self.load = list(sources), ImagesOnly(processor)

        def __len__(self):
            return len(self.sources)

        def __getitem__(self, i):
            return self.load(self.sources[i])

    loader = DataLoader(_Images(images), batch_size=batch_size, num_workers=num_workers, collate_fn=pad_batch)
    model.eval()
    out: list[dict] = []
    for batch in inference_batches(loader, device, progress):
        sizes = batch.pop("orig_size")
        outputs = model(pixel_values=batch["pixel_values"], pixel_mask=batch["pixel_mask"])
        out += postprocess(processor, outputs, sizes, threshold, top_k)
    return out


def coco_results(detections: list[dict], image_ids: Sequence, category_ids: Sequence[int],
                 file_names: Sequence[str] | None = None) -> list[dict]:
    """COCO results: ``{"image_id", "category_id" (the data's), "bbox" [x, y, w, h], "score"}`` per detection
    (``file_name`` too when given)."""
    results = []
    for i, (found, image_id) in enumerate(zip(detections, image_ids)):
        for box, score, label in zip(found["boxes"].tolist(), found["scores"].tolist(), found["labels"].tolist()):
            x1, y1, x2, y2 = box
            row = {"image_id": image_id, "category_id": int(category_ids[int(label)]),
                   "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(score, 5)}
            if file_names is not None:
                row["file_name"] = file_names[i]
            results.append(row)
    return results


# -- the run's splits -------------------------------------------------------------------------------------------------

def load_detection_data(data_args, seed: int, cache_dir: str | None = None) -> dict[str, CocoData]:
    """``train`` / ``validation`` (given, else a seeded ``--validation_split_percentage`` of train) / ``test``, every
    split checked against the training data's categories, and summarised in the log."""
    if data_args.dataset_name:
        from ftlib.data.files import load_hub

        splits = {"train": data_args.train_split, "validation": data_args.validation_split or "validation",
                  "test": data_args.test_split or "test"}
        from datasets import get_dataset_split_names

        names = get_dataset_split_names(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
        splits = {role: split for role, split in splits.items()
                  if split in names or role == "train" or split == getattr(data_args, f"{role}_split")}
        raw = load_hub(data_args.dataset_name, data_args.dataset_config_name, splits, cache_dir)
        data = {"train": hub_rows(raw["train"], data_args.image_column, data_args.objects_column, data_args.classes,
                                  data_args.box_tolerance, source=f"{data_args.dataset_name}:train")}
        for role in ("validation", "test"):
            if role in raw:
                data[role] = hub_rows(raw[role], data_args.image_column, data_args.objects_column, None,
                                      data_args.box_tolerance, data["train"].categories,
                                      f"{data_args.dataset_name}:{raw[role].split}")
    else:
        folder = data_args.image_folder
        data = {"train": read_coco(data_args.train_file, folder, None, data_args.classes, data_args.box_tolerance)}
        for role in ("validation", "test"):
            path = getattr(data_args, f"{role}_file")
            if path:
                data[role] = read_coco(path, folder, data["train"].categories, None, data_args.box_tolerance)
    if "validation" not in data:
        train = data["train"]
        parts = train.dataset.train_test_split(test_size=data_args.validation_split_percentage / 100, seed=seed)
        data["validation"] = CocoData(parts["test"], train.categories)
        train.dataset = parts["train"]
        logger.info("validation: %d of the %d training images held out (seed %d)", len(parts["test"]),
                    len(parts["train"]) + len(parts["test"]), seed)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    for role, split in data.items():
        if limits[role] is not None:
            split.dataset = split.dataset.select(range(min(limits[role], len(split.dataset))))
        if not len(split.dataset):
            raise ValueError(f"the {role} split has no images")
        split.negatives = sum(not boxes for boxes in split.dataset["boxes"])
        split.log(role)
    return data
