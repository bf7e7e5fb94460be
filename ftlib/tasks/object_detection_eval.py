"""Object detection evaluation: COCO mAP (pycocotools, through torchmetrics' ``MeanAveragePrecision``) accumulated
batch by batch inside Trainer's own evaluation loop, and the report's worst validation images with their boxes.

DETR's outputs are dicts of per-query tensors and its labels a dict per image, which Trainer's prediction loop would
try to concatenate across batches; :class:`DetectionTrainer` instead post-processes each batch to boxes in original
image coordinates as it comes (``prediction_step``) and adds the metrics to the loop's own (``evaluation_loop``), so
every standard flag (eval / save strategies, best model, early stopping) sees them.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch

from ftlib.tasks.object_detection_data import postprocess
from ftlib.training.trainer import FtTrainer

logger = logging.getLogger("ftlib.detection")

REPORT_THRESHOLD = 0.5  # the report draws predictions scoring at least this
WORST_IMAGES = 6


def coco_map(predictions: list[dict], targets: list[dict], label_names: list[str]) -> dict[str, float]:
    """COCO box metrics of ``predictions`` (``boxes`` xyxy, ``scores``, ``labels`` per image) against ``targets``
    (``boxes`` xyxy, ``labels``): map (IoU 0.50:0.95), map_50, map_75, map_small / medium / large, mar_100, and
    ``ap_<class>`` per class (-1 for a class with no box in ``targets``), as pycocotools' COCOeval computes them."""
    metric = new_metric()
    metric.update(predictions, targets)
    return summarise(metric, label_names)


def new_metric():
    from torchmetrics.detection import MeanAveragePrecision

    # Fed every image once, gathered from every process (DetectionTrainer): its own sync would count them again.
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", class_metrics=True,
                                sync_on_compute=False)


def summarise(metric, label_names: list[str]) -> dict[str, float]:
    result = metric.compute()
    out = {key: float(result[key]) for key in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
                                               "mar_100")}
    per_class = result["map_per_class"].reshape(-1).tolist()
    classes = result["classes"].reshape(-1).tolist()
    for label, value in zip(classes, per_class):
        if 0 <= int(label) < len(label_names):
            out[f"ap_{label_names[int(label)].replace(' ', '_')}"] = float(value)
    return out


def target_boxes(label: dict) -> dict:
    """A processor target (``boxes`` centre x, y, w, h relative to the image; ``orig_size`` [h, w]) in original
    pixels, x1 y1 x2 y2."""
    height, width = label["orig_size"].tolist()
    boxes = label["boxes"].detach().float().cpu().reshape(-1, 4) * torch.tensor([width, height, width, height])
    cx, cy, w, h = boxes.unbind(-1)
    return {"boxes": torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1),
            "labels": label["class_labels"].detach().cpu()}


class DetectionEvaluator:
    """Per evaluation: the mAP metric fed batch by batch, and every image's detections and true boxes (for the
    report's worst images)."""

    def __init__(self, processor, label_names: list[str], top_k: int = 100):
        self.processor, self.label_names, self.top_k = processor, list(label_names), top_k
        self.reset()

    def reset(self) -> None:
        self.metric = new_metric()
        self.images: list[tuple[dict, dict]] = []

    def update(self, outputs, labels: list[dict], gather=None) -> None:
        """One batch; ``gather`` (several processes) collects every process's images, each once."""
        sizes = torch.stack([label["orig_size"] for label in labels])
        predictions = postprocess(self.processor, outputs, sizes, threshold=0.0, top_k=self.top_k)
        images = list(zip(predictions, [target_boxes(label) for label in labels]))
        if gather is not None:
            images = gather(images)
        if images:
            self.metric.update([prediction for prediction, _ in images], [target for _, target in images])
        self.images += images

    def compute(self) -> dict[str, float]:
        if not self.images:
            return {}
        return summarise(self.metric, self.label_names)


class DetectionTrainer(FtTrainer):
    """``FtTrainer`` whose evaluation computes COCO mAP (see the module docstring); ``evaluator``: a
    :class:`DetectionEvaluator`."""

    def __init__(self, *args, evaluator: DetectionEvaluator, **kwargs):
        super().__init__(*args, **kwargs)
        self.evaluator = evaluator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            outputs = model(**inputs)
        # Several processes: every process scores all the images, each once (the copies that even out the last
        # batches dropped), so that the figures are the one-process ones.
        gather = (partial(self.accelerator.gather_for_metrics, use_gather_object=True)
                  if self.accelerator.num_processes > 1 else None)
        self.evaluator.update(outputs, inputs["labels"], gather)
        return outputs.loss.detach(), None, None

    def evaluation_loop(self, *args, **kwargs):
        prefix = kwargs.get("metric_key_prefix", "eval")
        self.evaluator.reset()
        output = super().evaluation_loop(*args, **kwargs)
        output.metrics.update({f"{prefix}_{key}": value for key, value in self.evaluator.compute().items()})
        return output


# -- the report's worst images --------------------------------------------------------------------------------------

def image_errors(prediction: dict, target: dict, threshold: float = REPORT_THRESHOLD, iou: float = 0.5) -> int:
    """Missed true boxes plus false detections (score >= ``threshold``) of one image, matched greedily by score at
    ``iou`` within a class: what ranks the report's worst images (not a metric)."""
    from torchvision.ops import box_iou

    keep = prediction["scores"] >= threshold
    boxes, labels = prediction["boxes"][keep], prediction["labels"][keep]
    matched = set()
    true_positives = 0
    if len(boxes) and len(target["boxes"]):
        overlaps = box_iou(boxes, target["boxes"])
        for p in range(len(boxes)):  # already sorted by score
            candidates = [(float(overlaps[p, t]), t) for t in range(len(target["boxes"]))
                          if t not in matched and int(target["labels"][t]) == int(labels[p])]
            best = max(candidates, default=(0.0, -1))
            if best[0] >= iou:
                matched.add(best[1])
                true_positives += 1
    return (len(target["boxes"]) - true_positives) + (len(boxes) - true_positives)


def draw_worst_images(evaluator: DetectionEvaluator, sources, folder: str | Path, k: int = WORST_IMAGES,
                      threshold: float = REPORT_THRESHOLD) -> list[Path]:
    """PNGs of the ``k`` validation images with the most errors (:func:`image_errors`): true boxes green, predictions
    scoring at least ``threshold`` red with class and score. ``sources``: the images, in evaluation order."""
    from PIL import ImageDraw

    from ftlib.data.image import open_image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    errors = [image_errors(p, t, threshold) for p, t in evaluator.images]
    order = sorted(range(len(errors)), key=lambda i: (-errors[i], i))[:k]
    names = evaluator.label_names
    written = []
    for rank, i in enumerate(order, 1):
        prediction, target = evaluator.images[i]
        image = open_image(sources[i])
        draw = ImageDraw.Draw(image)
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            draw.rectangle(box, outline=(0, 200, 0), width=2)
            draw.text((box[0] + 2, box[1] + 1), names[label], fill=(0, 200, 0))
        keep = prediction["scores"] >= threshold
        for box, label, score in zip(prediction["boxes"][keep].tolist(), prediction["labels"][keep].tolist(),
                                     prediction["scores"][keep].tolist()):
            draw.rectangle(box, outline=(230, 30, 30), width=2)
            draw.text((box[0] + 2, max(0.0, box[3] - 11)), f"{names[label]} {score:.2f}", fill=(230, 30, 30))
        path = folder / f"worst_{rank:02d}.png"
        image.save(path)
        written.append(path)
    return written
