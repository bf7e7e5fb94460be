"""Object detection: fine-tune an AutoModelForObjectDetection checkpoint (DETR, Conditional DETR, ...) with a head sized
to the data's categories, or build a fresh Conditional DETR on a pretrained backbone (--backbone dinov2-small, any
model transformers has a Backbone class for).

    accelerate launch recipes/object_detection.py --config recipes/configs/object_detection/demo.yaml [--learning_rate 1e-4 ...]
    python recipes/object_detection.py --backbone dinov2-small --train_file train.json --validation_file validation.json \\
        --classes person --output_dir out

Supports: COCO-format json files (images, annotations with bbox [x, y, w, h] in pixels, categories) beside an image
folder (--image_folder, default the json's folder + images/), or a Hub dataset in transformers' object-detection
example layout (image, objects: bbox / category / area / id); category ids mapped to contiguous labels (names from the
categories), --classes to keep some of them; images without boxes kept as negatives; every annotation checked and every
image decoded before training (a box outside its image, a non-positive size, an unknown category or image id fails
naming the annotation, the image and the box; boxes up to --box_tolerance px outside are clipped and counted); box-aware
augmentation (--augmentation none / light / standard: flip, colour, random scale / shift / crop; boxes that leave the
image are dropped); the image processor's resizing (--image_size, --max_image_size) and normalisation, batches padded
with a pixel mask; COCO mAP, mAP@50, mAP@75 and per-class AP (pycocotools through torchmetrics) at every evaluation;
every ftlib strategy flag over the backbone's blocks (layer-wise rates, --freeze_backbone, --freeze_lower_blocks, gradual
unfreezing, LoRA on the backbone with the head trained in full) and every standard TrainingArguments flag.
Writes to --output_dir: the model (safetensors) and its image processor (``pipeline("object-detection", model=OUT)``
works), categories.json (label -> the data's category id), all_results.json, test_predictions.json (COCO results for
--test_file), report/ with the worst validation images drawn (worst_detections/), a model card and a manifest;
--push_to_hub as in the other recipes. New images: ftlib-predict --model OUT --input FOLDER_OR_JSON --output preds.json.
Does not support: masks (segmentation), crowd regions (dropped, counted), --cv_folds, --compare_head_only,
--probe_first, --class_weights.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

from transformers import TrainingArguments

from ftlib.outputs.report import REPORT_DIR
from ftlib.run.cli import parse_args
from ftlib.run.steps import evaluate, fit, publish, save_model, set_best_metric, start_run
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.base import atomic_file
from ftlib.tasks.object_detection import TASK, DetectionDataArguments
from ftlib.tasks.object_detection_data import (
    DetectionTransform,
    augmentation,
    coco_results,
    detect,
    load_detection_data,
    pad_batch,
    write_categories,
)
from ftlib.tasks.object_detection_eval import DetectionEvaluator, DetectionTrainer, draw_worst_images
from ftlib.tasks.object_detection_model import build_detector, detection_processor, detector_config
from ftlib.training.arguments import VisionModelArguments
from ftlib.training.checkpoints import prepare_checkpoint, public_name
from ftlib.training.trainer import prepare_model

logger = logging.getLogger("ftlib.detection")

# The task's default strategy (a config or the command line overrides it); in a notebook: TASK.strategy().
RECIPE_DEFAULTS = dict(TASK.defaults)  # a copy: tests set the budget on it, not on the task


def main(
    model_args: VisionModelArguments,
    data_args: DetectionDataArguments,
    ft_args: FineTuneArguments,
    training_args: TrainingArguments,
) -> dict[str, float]:
    # -- start: what this recipe refuses, then logging, checks, output directory, Hub settings, seed
    refused = [flag for flag, on in (("--cv_folds", ft_args.cv_folds), ("--class_weights", ft_args.class_weights),
                                     ("--compare_head_only", ft_args.compare_head_only != "no"),
                                     ("--probe_first", ft_args.probe_first != "no")) if on]
    if refused:
        raise ValueError(f"{', '.join(refused)}: not supported for object detection (folds and class weights need one "
                         "label per row; a DETR head is a transformer, not a linear probe)")
    if ft_args.lora and ft_args.lora_save == "adapter" and model_args.backbone_init == "random":
        raise ValueError("--lora on --backbone_init random: an adapter's base would be the random backbone, which is "
                         "not saved; add --lora_save merged")
    run = start_run(training_args, ft_args, model_args, data_args)

    # -- data: COCO json (or Hub) rows, every annotation checked, every image decoded once, categories -> labels
    data = load_detection_data(data_args, training_args.seed, model_args.cache_dir)
    if data_args.check_images:
        from ftlib.data.image import scan_images

        for split in data.values():
            scan_images(split.dataset, "image", num_threads=data_args.preprocessing_num_workers)
    categories = data["train"].categories

    # -- image processor and config (the model is built with its trainer, below)
    checkpoint = prepare_checkpoint(model_args, training_args)
    processor = detection_processor(model_args, checkpoint, data_args.image_size, data_args.longest_edge)
    config = detector_config(model_args, checkpoint, categories)
    train_transform = augmentation(data_args.augmentation)
    encoded = {role: split.dataset.with_transform(DetectionTransform(processor, train_transform if role == "train"
                                                                     else None)) for role, split in data.items()}

    # -- model, strategy, trainer: built fresh for the final model and each search trial
    set_best_metric(training_args, "map", True)  # COCO's headline: mAP@[.50:.95] rewards tight boxes, not just found ones
    names = [c["name"] for c in categories]
    build = partial(build_trainer, validation=encoded["validation"], model_args=model_args, ft_args=ft_args,
                    checkpoint=checkpoint, config=config, processor=processor, label_names=names)

    # -- search (--hp_search), train (or --lr_find: the range test, nothing kept)
    trainer, metrics = fit(build, encoded["train"], training_args, ft_args, run)
    if trainer is None:
        return metrics

    # -- evaluate: COCO mAP on validation; the worst images drawn for the report
    metrics.update(evaluate(trainer, encoded["validation"]))
    output_dir = Path(training_args.output_dir)
    if trainer.is_world_process_zero():
        drawn = draw_worst_images(trainer.evaluator, data["validation"].dataset["image"],
                                  output_dir / REPORT_DIR / "worst_detections")
        logger.info("report: the %d validation images with the most errors drawn in %s", len(drawn),
                    output_dir / REPORT_DIR / "worst_detections")

    # -- predict: COCO results for the test images (and their metrics when they have boxes)
    if "test" in data:
        test = data["test"].dataset
        if any(test["boxes"]):
            metrics.update(evaluate(trainer, encoded["test"], "test"))
        if trainer.is_world_process_zero():
            model = trainer.accelerator.unwrap_model(trainer.model)
            found = detect(model, processor, test["image"], batch_size=training_args.per_device_eval_batch_size,
                           device=str(trainer.args.device), threshold=data_args.score_threshold)
            results = coco_results(found, test["image_id"], [c["id"] for c in categories], test["file_name"])
            with atomic_file(output_dir / "test_predictions.json") as partial_file:
                partial_file.write_text(json.dumps(results) + "\n", encoding="utf-8")
            logger.info("%d detections for %d test images in test_predictions.json", len(results), len(test))

    # -- save, categories, card, manifest, push
    save_model(trainer, ft_args)
    if trainer.is_world_process_zero():
        write_categories(output_dir, categories)
    publish(
        trainer, ft_args, run.hub, metrics, base_model=public_name(model_args.model_name_or_path),
        task=TASK.pipeline_tag, dataset=data_args.dataset_name or data_args.train_file, label_names=names,
        settings={"image_size": data_args.image_size, "max_image_size": data_args.longest_edge,
                  "augmentation": data_args.augmentation, "classes": data_args.classes,
                  "backbone": model_args.backbone},
        sections=card_sections(),
    )
    return metrics


def build_trainer(args: TrainingArguments, train, *, validation, model_args, ft_args, checkpoint, config, processor,
                  label_names) -> DetectionTrainer:
    """A fresh model with the run's strategy (LoRA, freezing; the backbone's blocks get the layer-wise rates, the DETR
    transformer and heads the head's) and its trainer: the final model's or a search trial's."""
    model = build_detector(model_args, checkpoint, config)
    model, anatomy = prepare_model(model, ft_args)
    return DetectionTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=processor,
        data_collator=pad_batch,
        ft_args=ft_args,
        anatomy=anatomy,
        evaluator=DetectionEvaluator(processor, label_names),
    )


def card_sections() -> list[str]:
    return ["## Using the model", "", "```python", "from transformers import pipeline", "",
            'detect = pipeline("object-detection", model="<this folder or repo>")',
            'print(detect("image.jpg", threshold=0.5))', "```", "",
            ("`categories.json` maps the label ids to the training data's category ids; `ftlib-predict --model "
             "<folder> --input images/ --output preds.json` writes COCO results with those ids."), ""]


if __name__ == "__main__":
    main(*parse_args((VisionModelArguments, DetectionDataArguments, FineTuneArguments, TrainingArguments),
                     defaults=RECIPE_DEFAULTS))
