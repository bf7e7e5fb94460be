"""Text classification: fine-tune a Transformers encoder on single sentences or sentence pairs.

    accelerate launch recipes/text_cls.py --config recipes/configs/text_cls/demo.yaml [--learning_rate 3e-5 ...]
    python recipes/text_cls.py --config recipes/configs/text_cls/demo.yaml

Supports: a Hub dataset or local csv / tsv / json / jsonl / parquet files; string or integer labels,
single-label, multi-label (a list per row, or strings with --label_separator) and regression (floats);
a seeded, stratified validation split when none is given; dynamic padding and length-grouped batches;
head+tail truncation; every ftlib strategy flag (freezing, layer-wise learning rates, gradual
unfreezing, LoRA, class weights, early stopping) and every standard TrainingArguments flag; k-fold
cross-validation of the training split before the final model (--cv_folds, --group_column, --cv_only; ftlib.run.cv).
Writes to --output_dir: the model (safetensors) and tokenizer, all_results.json, test_predictions.csv,
thresholds.json (multi-label: per-label thresholds tuned on validation, --tune_thresholds), a model card and a
SHA-256 manifest; --push_to_hub pushes them once, at the end, behind --push_min_metric; with --cv_folds,
cv_results.json and cv_oof_predictions.csv. Apply the output to new data with ftlib-predict.
Does not support: generative classification, more than two text columns.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, TrainingArguments

from ftlib.data.files import check_empty_inputs, load_data, source_name
from ftlib.data.labels import prepare_splits
from ftlib.data.text import effective_max_length, tokenize_text
from ftlib.outputs.report import EvalExamples
from ftlib.run.cli import parse_args
from ftlib.run.cv import ClassColumns, plan_folds, row_folds
from ftlib.run.steps import (
    evaluate,
    fit,
    predict_test,
    publish,
    save_model,
    set_best_metric,
    start_run,
    tune_thresholds,
)
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.metrics import compute_metrics_fn, default_metric
from ftlib.tasks.text_classification import TASK, TextDataArguments
from ftlib.tasks.thresholds import thresholds_wanted
from ftlib.training.arguments import ModelArguments
from ftlib.training.checkpoints import prepare_checkpoint, public_name
from ftlib.training.modeling import load_config_for_labels, load_model, load_tokenizer
from ftlib.training.trainer import FtTrainer, class_weights_from_labels, prepare_model

# The task's default strategy (a config or the command line overrides it); in a notebook: TASK.strategy().
RECIPE_DEFAULTS = dict(TASK.defaults)  # a copy: tests set the budget on it, not on the task


def main(
    model_args: ModelArguments,
    data_args: TextDataArguments,
    ft_args: FineTuneArguments,
    training_args: TrainingArguments,
) -> dict[str, float]:
    # -- start: logging, checks, output directory, Hub settings, extra metrics, seed
    run = start_run(training_args, ft_args, model_args, data_args)

    # -- data
    raw = load_data(data_args, model_args.cache_dir)
    raw = check_empty_inputs(raw, [data_args.text_column, data_args.text_pair_column], data_args, "text")
    raw, labels = prepare_splits(
        raw, data_args, [data_args.text_column, data_args.text_pair_column, data_args.id_column], training_args.seed,
        data_args.problem_type, data_args.label_separator,
    )
    tune = thresholds_wanted(data_args.tune_thresholds, labels.problem_type)  # multi-label: per-label thresholds
    folds = plan_folds(raw["train"], ft_args, training_args.seed, source_name(data_args, "train"), labels)  # --cv_folds

    # -- tokenizer and label config (the model is built with its trainer, below: once, and once per fold)
    checkpoint = prepare_checkpoint(model_args, training_args)  # short names converted once, main process first
    tokenizer = load_tokenizer(model_args, checkpoint)
    config = load_config_for_labels(model_args, labels.num_labels, labels.id2label, labels.problem_type,
                                    checkpoint=checkpoint)

    # -- tokenize
    max_length = effective_max_length(tokenizer, config, data_args.max_seq_length)
    with training_args.main_process_first(desc="tokenizing"):
        encoded = {
            split: tokenize_text(
                raw[split], tokenizer, data_args.text_column, data_args.text_pair_column, max_length,
                data_args.truncation, data_args.head_fraction, data_args.preprocessing_num_workers,
            )
            for split in raw
        }

    # -- model, strategy, trainer: built fresh for the final model, each search trial and each fold
    metric, greater = default_metric(labels.problem_type)
    set_best_metric(training_args, metric, greater)
    build = partial(build_trainer, validation=encoded["validation"], model_args=model_args, ft_args=ft_args,
                    checkpoint=checkpoint, config=config, tokenizer=tokenizer, labels=labels, extra_metrics=run.extra_metrics)
    folds_of = row_folds(build, encoded["train"], columns=ClassColumns(labels))
    train_ids = raw["train"][data_args.id_column] if data_args.id_column else range(len(raw["train"]))

    # -- search (--hp_search), cross-validation (--cv_folds), train (or --lr_find: the range test, nothing kept)
    trainer, metrics = fit(build, encoded["train"], training_args, ft_args, run, folds, folds_of, train_ids)
    if trainer is None:
        return metrics

    # -- evaluate
    metrics.update(evaluate(trainer, encoded["validation"]))
    thresholds = tune_thresholds(trainer, labels.names) if tune else None  # on that evaluation; thresholds.json

    # -- predict
    if "test" in encoded:
        ids = raw["test"][data_args.id_column] if data_args.id_column else np.arange(len(raw["test"]))
        metrics.update(predict_test(trainer, encoded["test"], ids, labels, thresholds))

    # -- save, card, manifest, push
    save_model(trainer, ft_args)
    publish(
        trainer, ft_args, run.hub, metrics, base_model=public_name(model_args.model_name_or_path), task="text-classification",
        dataset=data_args.dataset_name or data_args.train_file, label_names=labels.names,
        report=EvalExamples.text(raw["validation"], data_args.text_column, data_args.text_pair_column),
    )
    return metrics


def build_trainer(
    args: TrainingArguments,
    train,
    *,
    validation,
    model_args: ModelArguments,
    ft_args: FineTuneArguments,
    checkpoint: str,
    config,
    tokenizer,
    labels,
    extra_metrics,
) -> FtTrainer:
    """A fresh model with the run's strategy (LoRA, freezing; learning-rate groups and gradual unfreezing are built
    by the trainer) and its trainer on ``train``: the final model's, a search trial's (ftlib.run.hp_search) or a
    cross-validation fold's (ftlib.run.cv)."""
    model = load_model(AutoModelForSequenceClassification, model_args, config, checkpoint)
    model, anatomy = prepare_model(model, ft_args, task_type="SEQ_CLS")
    class_weights = class_weights_from_labels(
        ft_args.class_weights, train["labels"], labels.num_labels,
        multi_label=labels.problem_type == "multi_label_classification", regression=labels.problem_type == "regression",
    )
    return FtTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if args.fp16 or args.bf16 else None),
        compute_metrics=compute_metrics_fn(labels.problem_type, labels.names, extra_metrics),
        ft_args=ft_args,
        anatomy=anatomy,
        class_weights=class_weights,
    )


if __name__ == "__main__":
    main(*parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), defaults=RECIPE_DEFAULTS))
