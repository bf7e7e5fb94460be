"""The steps every recipe shares around its task-specific middle: start (logging, output checks, Hub
settings, seed) and finish (train, evaluate, save, model card, manifest, push behind the quality gate)."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import transformers
from transformers import TrainingArguments, set_seed

from ftlib.core.options import option_name
from ftlib.outputs.hub import (
    HubSettings,
    check_push_access,
    files_to_push,
    push_command,
    push_or_explain,
    quality_gate,
    take_hub_settings,
    write_model_card,
)
from ftlib.outputs.integrity import write_manifest
from ftlib.outputs.report import EvalExamples, report_from_trainer
from ftlib.run.cli import config_yaml
from ftlib.run.cv import cross_validate
from ftlib.run.head_only import COMPARISON_FILE, compare_head_only, comparison_card, wants_probe
from ftlib.run.hp_search import card_section as hp_search_card
from ftlib.run.hp_search import search_hyperparameters
from ftlib.run.launch import check_launch
from ftlib.run.lr_find import run_lr_find
from ftlib.run.output_dir import (
    TakeOutputDir,
    check_free_space,
    check_resume_config,
    checkpoint_bytes,
    claim_output_dir,
    release_output_dir,
)
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.lora import save_lora
from ftlib.tasks.metrics import load_extra_metrics
from ftlib.training.trainer import check_strategy_args

logger = logging.getLogger("ftlib")

@dataclass
class RunStart:
    resume_from: str | None
    hub: HubSettings
    config: str = ""  # the effective configuration as YAML; written to config.yaml when training starts
    extra_metrics: list = dataclasses.field(default_factory=list)  # --extra_metrics, loaded (ftlib.tasks.metrics)


def end_process_group_at_exit() -> None:
    """Several processes: destroy the process group when the process exits. A gloo group left to the interpreter's
    teardown can abort a rank after everything was written ("terminate called without an active exception",
    SIGABRT: a flaky failure of a finished run)."""
    import atexit

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def start_run(training_args: TrainingArguments, ft_args: FineTuneArguments, *other_args) -> RunStart:
    """Logging on the main process, every check that needs no model or data (``--extra_metrics`` modules loaded),
    the seed, and the effective configuration of the run (``other_args``: the recipe's model and data arguments), which :func:`train`
    writes to ``config.yaml`` and from which ``--config`` reproduces the run."""
    level = training_args.get_process_log_level()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    # ftlib's own messages (trainable parameters, resume, unfreezing stages) show on the main process
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)
    check_launch(training_args, ft_args)  # launched processes, engine and strategy agree, or stop before any write
    end_process_group_at_exit()
    check_strategy_args(training_args, ft_args)
    hub = take_hub_settings(training_args)
    if hub.push and training_args.process_index == 0 and not ft_args.lr_find:  # token, offline, reachable, write access: before anything is written
        check_push_access(hub, later=push_command(training_args.output_dir, hub, ft_args.push_min_metric))
    config = config_yaml((*other_args, ft_args, training_args))  # as parsed, before any step adjusts them
    # --lr_find keeps nothing it trains: it neither takes nor resumes the output directory (ftlib.run.lr_find)
    resume = None if ft_args.lr_find else claim_output_dir(training_args, ft_args)
    if resume is not None and ft_args.cv_folds:
        raise ValueError(
            f"--output_dir {training_args.output_dir} holds the checkpoints of an unfinished run ({resume}), and "
            "--cv_folds does not resume (its fold models are never saved): pass --overwrite_output_dir true to "
            "start over, or drop --cv_folds to resume the final training"
        )
    if resume is not None and not ft_args.hp_search:  # a search checks once it knows the final values (ftlib.run.hp_search)
        check_resume_config(resume, config, ft_args.allow_config_change)
    extra_metrics = load_extra_metrics(ft_args.extra_metrics)  # a module that does not load fails now
    set_seed(training_args.seed)
    return RunStart(resume, hub, config, extra_metrics)


def set_best_metric(training_args: TrainingArguments, metric: str, greater_is_better: bool) -> None:
    """Default ``metric_for_best_model`` (early stopping, best checkpoint, quality gate) to the task's
    headline metric when the user left it unset."""
    if training_args.metric_for_best_model is None:
        training_args.metric_for_best_model = metric
        training_args.greater_is_better = greater_is_better


def strategy_summary(ft_args: FineTuneArguments, training_args: TrainingArguments) -> dict[str, Any]:
    """The settings that shaped the run, for the model card: non-default strategy flags plus the basics."""
    defaults = FineTuneArguments()
    summary = {
        f.name: getattr(ft_args, f.name)
        for f in dataclasses.fields(ft_args)
        if getattr(ft_args, f.name) != getattr(defaults, f.name) and f.name not in ("overwrite_output_dir", "allow_config_change")
    }
    summary.update(
        learning_rate=training_args.learning_rate,
        lr_scheduler_type=option_name(training_args.lr_scheduler_type),
        warmup_steps=training_args.warmup_steps,
        num_train_epochs=training_args.num_train_epochs,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        gradient_accumulation_steps=training_args.gradient_accumulation_steps,
        weight_decay=training_args.weight_decay,
        optimizer=ft_args.torch_optimizer or option_name(training_args.optim),
        seed=training_args.seed,
    )
    return summary


def fit(build, train_data, training_args: TrainingArguments, ft_args: FineTuneArguments, run: RunStart,
        folds=None, fold=None, ids=None, head_trains: bool = True) -> tuple[Any, dict[str, float]]:
    """A recipe's training once its data is ready, in order: the hyperparameter search (``--hp_search``, its best
    values set on the arguments, :mod:`ftlib.run.hp_search`; ``head_trains=False``: no head rate searched), the cross-validation (``--cv_folds``: ``folds`` from
    :func:`ftlib.run.cv.plan_folds`, ``fold`` the recipe's fold function, ``ids`` one per training row), then the final
    model: built by ``build(args, train_data)`` and trained (:func:`train`; with ``--compare_head_only``, then a
    linear probe too, the better on validation kept: :func:`ftlib.run.head_only.compare_head_only`), or swept by the
    learning-rate range test (``--lr_find``). Returns ``(trainer, metrics)``; the trainer is None when no final model trained
    (``--cv_only``, ``--lr_find``: the metrics are then the cross-validation's or the range test's)."""
    search_hyperparameters(build, training_args, ft_args, train_data, run, head_trains)
    cv = {}
    if folds is not None:
        cv = cross_validate(training_args, ft_args, folds, fold, ids=ids, config=run.config)
        if ft_args.cv_only:
            return None, cv
    trainer = build(training_args, train_data)
    if ft_args.lr_find:  # the range test in place of training: prints the rate to use, keeps nothing it trained
        return None, run_lr_find(trainer, ft_args)
    metrics = train(trainer, run.resume_from, run.config)
    if wants_probe(trainer, ft_args):  # --compare_head_only: a linear probe too; the better on validation is kept
        trainer, probe_metrics = compare_head_only(trainer, build, train_data, ft_args)
        if probe_metrics is not None:
            metrics = record_train(trainer, probe_metrics)
    elif trainer.is_world_process_zero():  # an earlier run's comparison would describe another model in the card
        (Path(training_args.output_dir) / COMPARISON_FILE).unlink(missing_ok=True)
    metrics.update(cv)  # the cross-validation's means and standard deviations, when it ran
    return trainer, metrics


def train(trainer, resume_from: str | None, config: str | None = None) -> dict[str, float]:
    """Check the free disk space, write ``config.yaml`` (``config``: :attr:`RunStart.config`), train (resuming
    when a checkpoint is given), record the train metrics and state."""
    # the space needed depends on the model, so this check waits until it is built (still before any step)
    args = trainer.args
    checkpoints = 0 if args.save_strategy == "no" else (args.save_total_limit or 2)  # no limit: at least 2
    check_free_space(args.output_dir, checkpoint_bytes(trainer.model, checkpoints))
    # first: the lock is taken (or refused) before any tracker writes its logs into the directory
    trainer.callback_handler.callbacks.insert(0, TakeOutputDir(config))
    result = trainer.train(resume_from_checkpoint=resume_from)
    return record_train(trainer, dict(result.metrics))


def record_train(trainer, metrics: dict[str, float]) -> dict[str, float]:
    """Log and save a finished training's metrics and state in its output directory."""
    metrics["train_samples"] = len(trainer.train_dataset)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def evaluate(trainer, dataset, prefix: str = "eval") -> dict[str, float]:
    metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
    metrics[f"{prefix}_samples"] = len(dataset)
    trainer.log_metrics(prefix, metrics)
    trainer.save_metrics(prefix, metrics)
    return metrics


def predict(trainer, dataset, prefix: str = "test") -> tuple[Any, dict[str, float]]:
    """``(predictions, metrics)`` for a split; when it has labels its metrics are logged and saved as
    ``{prefix}_results.json`` (without labels ``metrics`` is empty). Predictions are in dataset order."""
    output = trainer.predict(dataset, metric_key_prefix=prefix)
    metrics: dict[str, float] = {}
    if output.metrics and "labels" in dataset.column_names:
        metrics = dict(output.metrics)
        trainer.log_metrics(prefix, metrics)
        trainer.save_metrics(prefix, metrics)
    return output.predictions, metrics


def save_model(trainer, ft_args: FineTuneArguments) -> None:
    """The final model: full weights, the LoRA adapter, or the merged model (safetensors in every case).

    The weights come from the state dict that Accelerate gathers from every process
    (``accelerator.get_state_dict``): under FSDP (full or sharded state-dict type alike) and DeepSpeed ZeRO-3 each
    process holds a shard, and the main process writes the whole model. The gathering is a collective: every
    process calls this. Single-process and DDP runs save what they saved before (the same tensors)."""
    output_dir = trainer.args.output_dir
    state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model)
    if not ft_args.lora:
        # what Trainer.save_model does with a gathered state dict (its own skips the model under SHARDED_STATE_DICT):
        # the main process writes the weights, config, tokenizer / image processor and training_args.bin
        trainer._save(output_dir, state_dict=state_dict)
    elif trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model)
        save_lora(model, output_dir, merged=ft_args.lora_save == "merged", state_dict=state_dict)
        if trainer.processing_class is not None:
            trainer.processing_class.save_pretrained(output_dir)


def publish(
    trainer,
    ft_args: FineTuneArguments,
    hub: HubSettings,
    metrics: dict[str, float],
    *,
    base_model: str,
    task: str,
    dataset: str,
    label_names: list[str] | None = None,
    settings: dict[str, Any] | None = None,
    report: EvalExamples | None = None,
    sections: list[str] | None = None,
) -> None:
    """Write the report, the model card and manifest; push behind the quality gate when asked (main process only).
    ``settings``: a recipe's own settings that shaped the run (augmentation, image size), shown with the strategy.
    ``report``: the validation rows of the last evaluation, for the report's confusion matrix, calibration and
    top losses (:mod:`ftlib.outputs.report`; without them it has the training curves). ``sections``: the task's own
    model card sections (markdown lines)."""
    if not trainer.is_world_process_zero():
        return
    output_dir = Path(trainer.args.output_dir)
    metric = trainer.args.metric_for_best_model or "loss"  # the quality gate's metric, recorded for ftlib-push
    greater = trainer.args.greater_is_better if trainer.args.greater_is_better is not None else metric != "loss"
    summary = {**strategy_summary(ft_args, trainer.args), **(settings or {}), "metric_for_best_model": metric,
               "greater_is_better": greater}
    if ft_args.probe_first != "no":  # 'small' decides per run: record whether the head was trained first
        summary["head_probed_first"] = trainer.wants_probe_first()
    library = "peft" if ft_args.lora and ft_args.lora_save == "adapter" else "transformers"
    figures = report_from_trainer(trainer, report, label_names, metric)
    write_model_card(
        output_dir,
        base_model=base_model,
        task=task,
        dataset=dataset,
        metrics=metrics,
        strategy=summary,
        group_table=getattr(trainer, "group_table", ""),
        library=library,
        label_names=label_names,
        repo_id=hub.repo_id,
        report=[p.relative_to(output_dir).as_posix() for p in figures],
        sections=(sections or []) + hp_search_card(output_dir) + comparison_card(output_dir),
    )
    (output_dir / "ftlib_strategy.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    write_manifest(output_dir, published=files_to_push(output_dir))
    if hub.push:
        quality_gate(metrics, metric, ft_args.push_min_metric, greater)
        url = push_or_explain(output_dir, hub, ft_args.push_min_metric)
        logger.info("pushed to %s", url)
    release_output_dir(output_dir)  # the run is done with it


def write_predictions(path: str | Path, ids, label_names: list[str], predictions, scores, problem_type: str) -> Path:
    """A CSV of ``id, prediction, score`` (label names; ``;``-joined for multi-label, values for regression)."""
    import csv

    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "prediction", "score"])
        for row_id, pred, score in zip(ids, predictions, scores):
            if problem_type == "regression":
                writer.writerow([row_id, f"{float(pred):.6g}", f"{float(score):.6g}"])
            elif problem_type == "multi_label_classification":
                chosen = [label_names[i] for i, on in enumerate(pred) if on]
                writer.writerow([row_id, ";".join(chosen), ";".join(f"{score[i]:.4f}" for i, on in enumerate(pred) if on)])
            else:
                writer.writerow([row_id, label_names[int(pred)], f"{float(score):.4f}"])
    return path


def write_confusion_matrix(path: str | Path, predictions, label_ids, label_names: list[str]) -> list[list[int]]:
    """``{"labels": names, "matrix": counts}`` as JSON, rows the true label and columns the predicted one."""
    from ftlib.tasks.metrics import confusion

    matrix = confusion(predictions, label_ids, len(label_names))
    rows = ",\n  ".join(json.dumps(row) for row in matrix)  # one line per true label: readable as a table
    Path(path).write_text(f'{{\n "labels": {json.dumps(list(label_names))},\n "matrix": [\n  {rows}\n ]\n}}\n')
    return matrix


def tune_thresholds(trainer, label_names: list[str]):
    """Multi-label: one decision threshold per label, tuned on the last validation predictions
    (``FtTrainer.last_eval_output``, the evaluation that just ran) and written to ``thresholds.json`` (main
    process; :mod:`ftlib.tasks.thresholds`). From here on the trainer's metrics use them; pass them to
    :func:`predict_test`. Returns them, one per label."""
    import numpy as np
    from scipy.special import expit

    from ftlib.tasks.thresholds import THRESHOLDS_FILE, write_thresholds
    from ftlib.tasks.thresholds import tune_thresholds as tune

    output = trainer.last_eval_output
    if output is None or output.label_ids is None:
        raise ValueError("tuning thresholds needs an evaluation on the labelled validation split first")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    tuned = tune(expit(np.asarray(logits, dtype=np.float64)), output.label_ids, label_names)
    if trainer.is_world_process_zero():
        write_thresholds(trainer.args.output_dir, tuned)
    summary = ", ".join(f"{name} {cut:.3f}" for name, cut in tuned["thresholds"].items())
    logger.info("thresholds tuned on %d validation rows (%s): %s", tuned["rows"], THRESHOLDS_FILE, summary)
    thresholds = np.array([tuned["thresholds"][name] for name in label_names])
    if hasattr(trainer.compute_metrics, "thresholds"):
        trainer.compute_metrics.thresholds = thresholds
    return thresholds


def predict_test(trainer, dataset, ids, labels, thresholds=None) -> dict[str, float]:
    """Predict the test split: its metrics when it has labels (see :func:`predict`), and
    ``test_predictions.csv`` with one row per id (``labels`` is the run's ``LabelInfo``; ``thresholds``:
    multi-label decision thresholds from :func:`tune_thresholds`, else 0.5)."""
    from ftlib.tasks.metrics import decode_logits

    logits, metrics = predict(trainer, dataset, "test")
    preds, scores = decode_logits(logits, labels.problem_type, 0.5 if thresholds is None else thresholds)
    if trainer.is_world_process_zero():
        write_predictions(Path(trainer.args.output_dir) / "test_predictions.csv", ids, labels.names, preds, scores,
                          labels.problem_type)
    return metrics
