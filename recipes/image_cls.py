"""Image classification: fine-tune an AutoModelForImageClassification checkpoint (ViT, DeiT, BEiT, Swin, ConvNeXt,
ResNet, EfficientNet, ...) with a new head sized to the labels.

    accelerate launch recipes/image_cls.py --config recipes/configs/image_cls/demo.yaml [--learning_rate 1e-3 ...]
    python recipes/image_cls.py --config recipes/configs/image_cls/demo.yaml

Supports: a Hub dataset (image and label columns by name), a local image folder (<class>/<image>, or
train / val / test sub-folders), csv / jsonl / parquet files of image paths (relative to the file) and labels;
a seeded, stratified validation split when none is given; single-label and multi-label (lists, or strings
with --label_separator); grayscale, palette, RGBA and 16-bit images converted to RGB; every image decoded once
before training, so a bad file fails with its name before any step (or is skipped and counted with
--skip_corrupt_images); size and normalisation from the checkpoint's image processor (--image_size to
change the size); augmentation presets (none / light / standard / strong) with --augmentation_knobs, and
MixUp / CutMix on training batches; decoding and augmentation on the fly in DataLoader workers; every ftlib
strategy flag (freezing, layer-wise learning rates, gradual unfreezing, LoRA on attention with the head
trained, class weights, early stopping) and every standard TrainingArguments flag; k-fold cross-validation of
the training split before the final model (--cv_folds, --group_column, --cv_only; ftlib.run.cv). Small-data
defaults: at least 250 optimizer steps (--min_train_steps), batch-norm layers kept at their pretrained
statistics (--batch_norm frozen) and, on such small sets, a linear probe trained beside the fine-tuned model, the
better of the two on validation kept (--compare_head_only small; README "Small data").
Writes to --output_dir: the model (safetensors) and its image processor, all_results.json,
confusion_matrix.json (single-label, validation split), test_predictions.csv (id = image path), thresholds.json
(multi-label: per-label thresholds tuned on validation, --tune_thresholds), head_only_comparison.json (both models'
validation scores, when --compare_head_only trained a probe), a model card and a SHA-256 manifest;
--push_to_hub pushes them once, at the end, behind --push_min_metric; with --cv_folds, cv_results.json and
cv_oof_predictions.csv. Apply the output to new data with ftlib-predict.
Does not support: detection or segmentation, video, streaming datasets.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from transformers import AutoModelForImageClassification, TrainingArguments

from ftlib.data.files import check_empty_inputs, source_name
from ftlib.data.image import (
    ImageTransform,
    MixupCutmix,
    build_transforms,
    image_collate,
    image_ids,
    load_image_data,
    resize_processor,
    scan_images,
)
from ftlib.data.labels import MULTI, SINGLE, prepare_splits
from ftlib.outputs.report import EvalExamples
from ftlib.run.cli import parse_args
from ftlib.run.cv import ClassColumns, plan_folds, row_folds
from ftlib.run.steps import (
    fit,
    predict,
    predict_test,
    publish,
    save_model,
    set_best_metric,
    start_run,
    tune_thresholds,
    write_confusion_matrix,
)
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import TASK, ImageDataArguments
from ftlib.tasks.metrics import compute_metrics_fn, decode_logits, default_metric
from ftlib.tasks.thresholds import thresholds_wanted
from ftlib.training.arguments import ModelArguments
from ftlib.training.checkpoints import prepare_checkpoint, public_name
from ftlib.training.modeling import load_config_for_labels, load_image_processor, load_model
from ftlib.training.trainer import FtTrainer, class_weights_from_labels, prepare_model

logger = logging.getLogger("ftlib.image_cls")

# The task's default strategy (a config or the command line overrides it); in a notebook: TASK.strategy().
RECIPE_DEFAULTS = dict(TASK.defaults)  # a copy: tests set the budget on it, not on the task


def main(
    model_args: ModelArguments,
    data_args: ImageDataArguments,
    ft_args: FineTuneArguments,
    training_args: TrainingArguments,
) -> dict[str, float]:
    # -- start: logging, checks, output directory, Hub settings, extra metrics, seed
    run = start_run(training_args, ft_args, model_args, data_args)

    # -- data: image references (paths, or undecoded bytes) and labels; pixels are decoded later, in the workers
    with training_args.main_process_first(desc="image data"):  # main process first: sklearn-digits exported once
        raw = load_image_data(data_args, model_args.cache_dir)
    raw = check_empty_inputs(raw, [data_args.image_column], data_args, "image")
    raw, labels = prepare_splits(
        raw, data_args, [data_args.image_column, data_args.id_column], training_args.seed, data_args.problem_type,
        data_args.label_separator,
    )
    tune = thresholds_wanted(data_args.tune_thresholds, labels.problem_type)  # multi-label: per-label thresholds
    skipped: list[str] = []
    if data_args.check_images:
        raw, skipped = scan_images(raw, data_args.image_column, skip_corrupt=data_args.skip_corrupt_images,
                                   num_threads=data_args.preprocessing_num_workers)
        if skipped:
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            logger.warning("skipped %d unreadable image(s): %s%s", len(skipped), ", ".join(skipped[:10]), more)

    folds = plan_folds(raw["train"], ft_args, training_args.seed, source_name(data_args, "train"), labels)  # --cv_folds

    # -- image processor and label config (the model is built with its trainer, below: once, and once per fold)
    checkpoint = prepare_checkpoint(model_args, training_args)  # short names converted once, main process first
    processor = load_image_processor(model_args, checkpoint)
    if data_args.image_size is not None:
        processor = resize_processor(processor, data_args.image_size)  # saved with the model: inference matches
    config = load_config_for_labels(model_args, labels.num_labels, labels.id2label, labels.problem_type,
                                    checkpoint=checkpoint)

    # -- transforms: random for training, resize + centre crop for evaluation, run per batch in the workers
    transforms = {
        train: build_transforms(processor, data_args.augmentation, train=train, **data_args.knobs)
        for train in (True, False)
    }
    data = {
        split: raw[split].with_transform(ImageTransform(transforms[split == "train"], data_args.image_column))
        for split in raw
    }

    # -- model, strategy, trainer: built fresh for the final model, each search trial and each fold
    metric, greater = default_metric(labels.problem_type)
    set_best_metric(training_args, metric, greater)
    build = partial(build_trainer, validation=data["validation"], model_args=model_args, data_args=data_args,
                    ft_args=ft_args, checkpoint=checkpoint, config=config, processor=processor, labels=labels,
                    extra_metrics=run.extra_metrics)
    held_out = raw["train"].with_transform(ImageTransform(transforms[False], data_args.image_column))  # fold scoring
    folds_of = row_folds(build, data["train"], held_out, ClassColumns(labels))
    train_ids = None if folds is None else (  # a pass over the image column: only for the folds' predictions
        raw["train"][data_args.id_column] if data_args.id_column else image_ids(raw["train"], data_args.image_column))

    # -- search (--hp_search), cross-validation (--cv_folds), train (or --lr_find: the range test, nothing kept)
    trainer, metrics = fit(build, data["train"], training_args, ft_args, run, folds, folds_of, train_ids)
    if trainer is None:
        return metrics

    # -- evaluate (one pass over validation gives the metrics and the confusion matrix)
    if data_args.skip_corrupt_images:
        trainer.save_metrics("data", {"skipped_images": len(skipped)})
        metrics["skipped_images"] = len(skipped)
    logits, eval_metrics = predict(trainer, data["validation"], "eval")
    metrics.update(eval_metrics)
    if labels.problem_type == SINGLE and trainer.is_world_process_zero():
        write_confusion_matrix(Path(training_args.output_dir) / "confusion_matrix.json",
                               decode_logits(logits, SINGLE)[0], raw["validation"]["labels"], labels.names)
    thresholds = tune_thresholds(trainer, labels.names) if tune else None  # on that evaluation; thresholds.json

    # -- predict
    if "test" in data:
        column = data_args.id_column or data_args.image_column
        ids = raw["test"][column] if data_args.id_column else image_ids(raw["test"], column)
        metrics.update(predict_test(trainer, data["test"], ids, labels, thresholds))

    # -- save, card, manifest, push
    save_model(trainer, ft_args)
    publish(
        trainer, ft_args, run.hub, metrics, base_model=public_name(model_args.model_name_or_path),
        task="image-classification", dataset=data_args.dataset_name or data_args.image_folder or data_args.train_file,
        label_names=labels.names, settings=training_settings(data_args),
        report=EvalExamples.image(raw["validation"], data_args.image_column),
    )
    return metrics


def build_trainer(
    args: TrainingArguments,
    train,
    *,
    validation,
    model_args: ModelArguments,
    data_args: ImageDataArguments,
    ft_args: FineTuneArguments,
    checkpoint: str,
    config,
    processor,
    labels,
    extra_metrics,
) -> FtTrainer:
    """A fresh model with the run's strategy (LoRA, freezing; learning-rate groups and gradual unfreezing are built
    by the trainer) and its trainer on ``train``: the final model's, a search trial's (ftlib.run.hp_search) or a
    cross-validation fold's (ftlib.run.cv)."""
    model = load_model(AutoModelForImageClassification, model_args, config, checkpoint)
    model, anatomy = prepare_model(model, ft_args)
    class_weights = class_weights_from_labels(
        ft_args.class_weights, train.with_format(None)["labels"], labels.num_labels,
        multi_label=labels.problem_type == MULTI, regression=labels.problem_type not in (SINGLE, MULTI),
    )
    mix = MixupCutmix(labels.num_labels, data_args.mixup_alpha, data_args.cutmix_alpha, data_args.mixup_prob) \
        if data_args.mixing else None
    return FtTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=processor,
        data_collator=image_collate,
        compute_metrics=compute_metrics_fn(labels.problem_type, labels.names, extra_metrics),
        ft_args=ft_args,
        anatomy=anatomy,
        class_weights=class_weights,
        train_batch_transform=mix,
    )


def training_settings(data_args: ImageDataArguments) -> dict:
    """The data settings that shape training, for the model card: size, augmentation, mixing."""
    names = ("image_size", "augmentation", "augmentation_knobs", "mixup_alpha", "cutmix_alpha", "mixup_prob")
    settings = {name: getattr(data_args, name) for name in names}
    if not data_args.mixing:
        del settings["mixup_prob"]
    return {name: value for name, value in settings.items() if value not in (None, 0.0)}


if __name__ == "__main__":
    args = (ModelArguments, ImageDataArguments, FineTuneArguments, TrainingArguments)
    main(*parse_args(args, defaults=RECIPE_DEFAULTS))
