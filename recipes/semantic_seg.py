"""Semantic segmentation: fine-tune an AutoModelForSemanticSegmentation checkpoint (SegFormer, UperNet, DPT, BEiT, ...)
with a head sized to the classes, or build UperNet on a pretrained backbone (--backbone dinov2-small, a ConvNeXt, a
ResNet, ...).

    accelerate launch recipes/semantic_seg.py --config recipes/configs/semantic_seg/demo.yaml [--learning_rate 2e-4 ...]
    python recipes/semantic_seg.py --backbone dinov2-small --image_folder images --mask_folder masks --output_dir out

Supports: image + mask pairs (a mask PNG's pixel is a class id; --ignore_index, default 255, is ignored) from two
folders matched by file stem (train / val / test sub-folders, or a seeded validation split), csv / jsonl / parquet
files of image and mask paths (relative to the file), or a Hub dataset (--image_column, --mask_column); class names
from --class_names (a JSON {id: name}, a list, or COCO's semantic_categories.json) or class_<id>; --classes keeps
some classes by name (the rest become background 0) and --void_id marks an unlabelled value; every pair decoded once
before training (unreadable files, sizes that differ, colour masks, values that are no class: errors naming the
file); augmentation of image and mask together (none / light / standard) in DataLoader workers; mean IoU, per-class
IoU and pixel accuracy accumulated batch by batch (no full-size logits held); every ftlib strategy flag on the
backbone (freezing, layer-wise rates, gradual unfreezing, LoRA on its attention with the decode head trained) and
every TrainingArguments flag. Small-data defaults: a fast fresh head over a slower backbone (RECIPE_DEFAULTS).
Writes to --output_dir: the model (safetensors) and an image processor that `pipeline("image-segmentation")`
post-processes with, all_results.json, report/ (curves, and the validation images of lowest IoU drawn with their
true and predicted masks), a model card and a SHA-256 manifest; --push_to_hub as in the other recipes. New images:
ftlib-predict --model OUT --input FOLDER --output masks.csv (a mask PNG per image in masks_masks/).
Does not support: instance or panoptic segmentation, --cv_folds, --class_weights, evaluation at the masks' original
size (metrics are computed at the model's input size, masks resized nearest-neighbour).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from transformers import AutoConfig, TrainingArguments

from ftlib.outputs.report import REPORT_DIR
from ftlib.run.cli import parse_args
from ftlib.run.steps import evaluate, fit, publish, save_model, set_best_metric, start_run
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.semantic_segmentation import TASK, SegmentationDataArguments
from ftlib.tasks.semantic_segmentation_data import (
    SegmentationMetrics,
    SegTransform,
    avoid_one_image_batch,
    build_label_map,
    build_seg_transforms,
    build_segmenter,
    builds_on_backbone,
    check_values,
    class_maps,
    load_segmentation_data,
    read_class_names,
    scan_pairs,
    seg_collate,
    segmentation_processor,
    write_worst_overlays,
)
from ftlib.training.arguments import VisionModelArguments
from ftlib.training.checkpoints import prepare_checkpoint, public_name
from ftlib.training.modeling import checkpoint_kwargs, load_image_processor
from ftlib.training.trainer import FtTrainer, prepare_model

logger = logging.getLogger("ftlib.semantic_seg")

# The task's default strategy (a config or the command line overrides it); in a notebook: TASK.strategy().
RECIPE_DEFAULTS = dict(TASK.defaults)  # a copy: tests set the budget on it, not on the task


def main(
    model_args: VisionModelArguments,
    data_args: SegmentationDataArguments,
    ft_args: FineTuneArguments,
    training_args: TrainingArguments,
) -> dict[str, float]:
    # -- start: what this recipe refuses, then logging, checks, output directory, Hub settings, seed
    refused = [flag for flag, on in (("--cv_folds", ft_args.cv_folds), ("--class_weights", ft_args.class_weights))
               if on]
    if refused:
        raise ValueError(f"{', '.join(refused)}: not supported for semantic segmentation")
    if data_args.class_names is None and not data_args.check_images:
        raise ValueError("without --class_names the classes are the values found by decoding every mask: keep "
                         "--check_images, or give --class_names")
    run = start_run(training_args, ft_args, model_args, data_args)

    # -- data: image and mask references; every pair decoded once (named errors), mask values mapped to label ids
    with training_args.main_process_first(desc="segmentation data"):
        raw = load_segmentation_data(data_args, training_args.seed, model_args.cache_dir)
    raw["train"] = avoid_one_image_batch(raw["train"], training_args.per_device_train_batch_size * training_args.world_size)
    columns = (data_args.image_column, data_args.mask_column)
    found = scan_pairs(raw, *columns, num_threads=data_args.preprocessing_num_workers) if data_args.check_images else {}
    labels = build_label_map(read_class_names(data_args.class_names), data_args.classes, data_args.ignore_index,
                             data_args.void_id, set().union(*(v for rows in found.values() for v in rows)))
    check_values(found, raw, data_args.mask_column, labels)
    logger.info("%d classes: %s", len(labels.names), ", ".join(labels.names[:20]))

    # -- model source and image processor: a segmentation checkpoint's own, or one made for UperNet on a backbone
    checkpoint = prepare_checkpoint(model_args, training_args)
    config = AutoConfig.from_pretrained(checkpoint, **checkpoint_kwargs(model_args))
    assembled = builds_on_backbone(model_args, config)
    processor = make_processor(model_args, data_args, checkpoint, config, assembled)

    # -- transforms: image and mask together, random for training, the processor's resize for evaluation
    transforms = {train: build_seg_transforms(processor, data_args.augmentation, train, data_args.ignore_index)
                  for train in (True, False)}
    data = {split: raw[split].with_transform(SegTransform(transforms[split == "train"], *columns, labels))
            for split in raw}

    # -- model, strategy, trainer: built fresh for the final model and each search trial
    set_best_metric(training_args, "mean_iou", True)
    build = partial(build_trainer, validation=data["validation"], model_args=model_args, ft_args=ft_args,
                    checkpoint=checkpoint, assembled=assembled, processor=processor, labels=labels)

    # -- search (--hp_search), train (or --lr_find: the range test, nothing kept)
    trainer, metrics = fit(build, data["train"], training_args, ft_args, run)
    if trainer is None:
        return metrics

    # -- evaluate: mean IoU, per-class IoU, pixel accuracy; the test split too when it has masks
    if "test" in data and data_args.mask_column in raw["test"].column_names:
        metrics.update(evaluate(trainer, data["test"], "test"))
    metrics.update(evaluate(trainer, data["validation"]))  # last: the report's worst images are validation's

    # -- save, report (the worst validation images), card, manifest, push
    save_model(trainer, ft_args)
    overlays = []
    if trainer.is_world_process_zero():
        overlays = write_worst_overlays(trainer.accelerator.unwrap_model(trainer.model), raw["validation"], *columns,
                                        labels, processor, trainer.compute_metrics.image_iou,
                                        Path(training_args.output_dir) / REPORT_DIR / "worst_images")
    publish(
        trainer, ft_args, run.hub, metrics, base_model=public_name(model_args.model_name_or_path),
        task=TASK.pipeline_tag, dataset=data_args.dataset_name or data_args.image_folder or data_args.train_file,
        label_names=labels.names, settings=training_settings(data_args, processor, assembled),
        sections=card_sections(overlays, Path(training_args.output_dir)),
    )
    return metrics


def make_processor(model_args, data_args, checkpoint: str, config, assembled: bool):
    """The image processor saved with the model: for UperNet on a backbone, SegFormer's with the backbone's mean and
    std (the size a multiple of a ViT's patch); else the checkpoint's, resized with --image_size."""
    from ftlib.data.image import resize_processor

    try:
        base = load_image_processor(model_args, checkpoint)
    except (OSError, ValueError):
        if not assembled:
            raise
        base = None  # a backbone without a processor: ImageNet's mean and std
    if assembled:
        return segmentation_processor(base, data_args.image_size, getattr(config, "patch_size", None))
    return resize_processor(base, data_args.image_size) if data_args.image_size else base


def build_trainer(args: TrainingArguments, train, *, validation, model_args, ft_args, checkpoint, assembled, processor,
                  labels) -> FtTrainer:
    """A fresh model with the run's strategy and its trainer on ``train``: the final model's or a search trial's."""
    model = build_segmenter(checkpoint, model_args, labels, assembled)
    model, anatomy = prepare_model(model, ft_args)
    return FtTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=processor,
        data_collator=seg_collate,
        compute_metrics=SegmentationMetrics(labels.names, labels.ignore_index),
        preprocess_logits_for_metrics=class_maps,
        ft_args=ft_args,
        anatomy=anatomy,
    )


def training_settings(data_args: SegmentationDataArguments, processor, assembled: bool) -> dict:
    """The data settings that shaped training, for the model card."""
    size = processor.size
    settings = {"image_size": f"{size.get('height')}x{size.get('width')}" if "height" in size else dict(size),
                "augmentation": data_args.augmentation, "ignore_index": data_args.ignore_index}
    if assembled:
        settings["decode_head"] = "UperNet (fresh)"
    if data_args.classes:
        settings["classes"] = ", ".join(data_args.classes)
    return settings


def card_sections(overlays: list[Path], output_dir: Path) -> list[str]:
    lines = ["## Using the model", "", "```python", "from transformers import pipeline", "",
             'segment = pipeline("image-segmentation", model="<this folder or repo>")',
             'for region in segment("photo.jpg"):  # a mask (PIL image) per class present',
             '    print(region["label"], region["mask"])', "```", ""]
    if overlays:
        lines += ["## Worst validation images (lowest mean IoU: image, true mask, predicted mask)", ""]
        lines += [f"![{p.stem}]({p.relative_to(output_dir).as_posix()})" for p in overlays[:4]] + [""]
    return lines


if __name__ == "__main__":
    args = (VisionModelArguments, SegmentationDataArguments, FineTuneArguments, TrainingArguments)
    main(*parse_args(args, defaults=RECIPE_DEFAULTS))
