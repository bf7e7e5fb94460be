"""k-fold cross-validation (``--cv_folds K``): on small data one validation split is a noisy judge, so K fresh models
each train on K-1 folds of the training split and are scored on the fold they did not see.

A recipe plans the folds right after its data is ready (:func:`plan_folds`: the checks run before any model loads),
then hands :func:`cross_validate` a *fold function* ``fold(args, train_rows, held_rows) -> Fold``: its own
model-building and trainer code applied to those rows (``train_rows`` / ``held_rows``: indices into the training
split), so every fold trains with the run's whole strategy (freezing, learning-rate groups, gradual unfreezing, LoRA,
class weights, the step budget, early stopping on the run's validation split). :func:`row_folds` makes one for data
with one model input per training row (text, images). What a run with ``--cv_folds`` writes to ``--output_dir``:

- ``cv_results.json``: the folds, each fold's metrics on its held-out rows, and per metric the mean and the standard
  deviation across folds (numpy's: ``np.mean``, ``np.std`` with ddof 0), printed as a table;
- ``all_results.json``: ``cv_<metric>_mean`` and ``cv_<metric>_std`` beside the final model's results;
- ``cv_oof_predictions.csv``: every training row once, predicted by the fold model that did not train on it
  (``id, fold, label, prediction``, and ``prob_<label>`` per class for classification; multi-label at 0.5);
- ``cv/fold-<k>/``: each fold's training log (``trainer_state.json``) and results. Fold models are not saved:
  ``save_strategy`` is ``no`` for them, except with ``--load_best_model_at_end``, whose checkpoints are deleted
  once the fold is evaluated.

Folds are seeded by ``--seed``; single-label classification is stratified by label (``StratifiedKFold``), other
tasks get plain shuffled folds (``KFold``); ``--group_column`` keeps each group's rows in one fold
(``StratifiedGroupKFold`` / ``GroupKFold``). The run holds its output directory from the first fold on; the final
model then trains as without cross-validation (``--cv_only``: not at all, and the directory gets its manifest).
"""

from __future__ import annotations

import copy
import csv
import gc
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import SaveStrategy

from ftlib.data.files import require_columns
from ftlib.data.labels import MULTI, REGRESSION, SINGLE, LabelInfo
from ftlib.outputs.hub import files_to_push
from ftlib.outputs.integrity import write_manifest
from ftlib.run.output_dir import release_output_dir, take_output_dir
from ftlib.tasks.metrics import per_class_metric

logger = logging.getLogger("ftlib")

CV_DIR = "cv"
RESULTS_FILE = "cv_results.json"
OOF_FILE = "cv_oof_predictions.csv"
# Trainer's bookkeeping in every evaluation's metrics: not a measure of the model
NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second")


@dataclass
class Fold:
    """One fold, built by a recipe's fold function. ``trainer``: a fresh model with the run's strategy, training on
    the fold's training rows (its ``eval_dataset``: the run's validation split); ``held_out``: the held-out rows as
    the model takes them (evaluation transforms); ``columns``: turns the predictions on them into the out-of-fold
    columns, one dict per row (:class:`ClassColumns`, :class:`TagColumns`); ``held_out_metrics``: the
    ``compute_metrics`` for them, when it depends on the rows (word-level token metrics)."""

    trainer: Trainer
    held_out: Any
    columns: Callable[[Any, Any], list[dict[str, str]]]
    held_out_metrics: Callable | None = None


FoldFunction = Callable[[TrainingArguments, np.ndarray, np.ndarray], Fold]


# -- the folds ----------------------------------------------------------------------------------------------------
def make_folds(num_rows: int, k: int, seed: int, strata: Sequence[str] | None = None,
               groups: Sequence[str] | None = None, source: str = "the training data",
               group_column: str | None = None) -> list[np.ndarray]:
    """The held-out row indices of each of ``k`` folds (sorted; together every row exactly once), seeded.
    ``strata``: a label per row to stratify by (each class in every fold, in proportion); ``groups``: a group per
    row, a group's rows all in one fold. Raises naming the class or column when ``k`` folds cannot be made."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if k < 2:
        raise ValueError(f"--cv_folds must be >= 2, got {k}")
    if num_rows < k:
        raise ValueError(f"--cv_folds {k}: {source} has {num_rows} training rows, fewer than the folds")
    if strata is not None:
        counts = Counter(strata)
        name, smallest = min(counts.items(), key=lambda item: (item[1], str(item[0])))
        if smallest < k:
            raise ValueError(
                f"--cv_folds {k}: class '{name}' has {smallest} training row{'s' if smallest != 1 else ''} in {source}; "
                f"stratified folds hold every class in every fold, so K can be at most the smallest class's count "
                f"(--cv_folds {smallest} or fewer{'' if smallest >= 2 else ': add rows of that class or drop it'})"
            )
    if groups is not None:
        distinct = len(set(groups))
        if distinct < k:
            raise ValueError(f"--cv_folds {k}: --group_column {group_column!r} of {source} has {distinct} group"
                             f"{'s' if distinct != 1 else ''}; grouped folds need at least one group per fold")
        if strata is not None:
            spread = {label: len({g for g, s in zip(groups, strata) if s == label}) for label in set(strata)}
            few = sorted(label for label, n in spread.items() if n < k)
            if few:
                logger.warning("--cv_folds %d grouped by %r: class%s %s occur%s in fewer groups than folds, so some "
                               "held-out folds have none of %s", k, group_column, "es" if len(few) > 1 else "",
                               ", ".join(map(repr, few)), "" if len(few) > 1 else "s", "them" if len(few) > 1 else "it")
    rows = np.zeros(num_rows)
    if strata is not None and groups is not None:
        splits = StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(rows, list(strata), list(groups))
    elif strata is not None:
        splits = StratifiedKFold(k, shuffle=True, random_state=seed).split(rows, list(strata))
    elif groups is not None:
        splits = GroupKFold(k, shuffle=True, random_state=seed).split(rows, groups=list(groups))
    else:
        splits = KFold(k, shuffle=True, random_state=seed).split(rows)
    return [np.sort(held) for _, held in splits]


@dataclass
class Folds:
    """The folds of a run: ``held_out``, the sorted training-row indices of each fold (every row in exactly one);
    ``method``, how they were made, in words (cv_results.json, the printed table)."""

    held_out: list[np.ndarray]
    method: str


def plan_folds(train, ft_args, seed: int, source: str, labels: LabelInfo | None = None) -> Folds | None:
    """The folds of ``--cv_folds`` over a recipe's training split (None without it), made before any model loads:
    stratified by the ``labels`` column for single-label classification (``labels``: the run's; None, as for
    tokens: not stratified), grouped by ``--group_column`` (a missing column is an error naming ``source`` and the
    column). See :func:`make_folds`."""
    if not ft_args.cv_folds:
        return None
    groups, column = None, ft_args.group_column
    if column:
        require_columns(train, [column], source)
        groups = list(train.with_format(None)[column])
        if None in groups:
            raise ValueError(f"{source}: --group_column {column!r} is empty in data row {groups.index(None) + 1}; "
                             "every row needs its group")
        groups = [str(g) for g in groups]
    strata = None
    if labels is not None and labels.problem_type == SINGLE:
        strata = [labels.names[i] for i in train.with_format(None)["labels"]]
    held_out = make_folds(len(train), ft_args.cv_folds, seed, strata, groups, source, column)
    kind = {(True, True): "StratifiedGroupKFold", (True, False): "StratifiedKFold", (False, True): "GroupKFold",
            (False, False): "KFold"}[strata is not None, groups is not None]
    how = ["stratified by label" if strata is not None else "not stratified"] + ([f"grouped by {column!r}"] if column else [])
    return Folds(held_out, f"{kind}, {', '.join(how)}")


# -- out-of-fold columns ------------------------------------------------------------------------------------------
@dataclass
class ClassColumns:
    """The out-of-fold columns of text and image classification: ``label`` and ``prediction`` (names; ``;``-joined
    for multi-label, at a 0.5 threshold; values for regression) and ``prob_<label>`` per class (softmax, or each
    label's sigmoid for multi-label)."""

    labels: LabelInfo

    def __call__(self, predictions, label_ids) -> list[dict[str, str]]:
        from scipy.special import expit, softmax

        logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions, dtype=np.float64)
        names, kind = self.labels.names, self.labels.problem_type
        if kind == REGRESSION:
            values, targets = logits.reshape(len(logits), -1)[:, 0], np.asarray(label_ids, dtype=np.float64).reshape(-1)
            return [{"label": f"{t:.6g}", "prediction": f"{v:.6g}"} for t, v in zip(targets, values)]
        probs = expit(logits) if kind == MULTI else softmax(logits, axis=-1)
        rows = []
        for gold, p in zip(np.asarray(label_ids), probs):
            if kind == MULTI:
                label = ";".join(n for n, on in zip(names, gold) if on >= 0.5)
                prediction = ";".join(n for n, q in zip(names, p) if q >= 0.5)
            else:
                label, prediction = names[int(gold)], names[int(p.argmax())]
            rows.append({"label": label, "prediction": prediction, **{f"prob_{n}": f"{q:.6f}" for n, q in zip(names, p)}})
        return rows


@dataclass
class TagColumns:
    """The out-of-fold columns of token classification: a sentence's gold and predicted tags, space-separated, one
    per word (``word_metrics``: the held-out sentences' :class:`ftlib.tasks.metrics.WordMetrics`)."""

    word_metrics: Any

    def __call__(self, predictions, label_ids) -> list[dict[str, str]]:
        gold = self.word_metrics.sentences["tags"]
        return [{"label": " ".join(g), "prediction": " ".join(p)}
                for g, p in zip(gold, self.word_metrics.tags(predictions))]


def row_folds(build: Callable[[TrainingArguments, Any], Trainer], train, held_out=None,
              columns: Callable | None = None) -> FoldFunction:
    """The fold function of data with one model input per training row (text, images): ``build(args, rows)``
    trains on ``train.select(train_rows)``; the held-out rows are ``held_out.select(held_rows)`` (``held_out``:
    the training split with the evaluation transforms, default ``train``)."""
    held_out = train if held_out is None else held_out

    def fold(args, train_rows, held_rows) -> Fold:
        return Fold(build(args, train.select(train_rows)), held_out.select(held_rows), columns)

    return fold


# -- the loop -----------------------------------------------------------------------------------------------------
def fold_args(training_args: TrainingArguments, output_dir: Path) -> TrainingArguments:
    """The run's arguments for one fold: its own folder, no trackers, no saved model (checkpoints only where
    ``--load_best_model_at_end`` needs them). A shallow copy: what the trainer adjusts (the step budget's epochs,
    evaluation interval) stays the fold's."""
    args = copy.copy(training_args)
    args.output_dir = str(output_dir)
    args.report_to = []
    if not args.load_best_model_at_end:
        args.save_strategy = SaveStrategy.NO
    return args


def summarize(per_fold: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric that every fold has: ``mean`` and ``std`` (numpy's, ddof 0), ``min``, ``max``."""
    names = [name for name in per_fold[0] if all(name in fold for fold in per_fold)]
    summary = {}
    for name in names:
        values = np.array([fold[name] for fold in per_fold], dtype=np.float64)
        summary[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                         "min": float(np.min(values)), "max": float(np.max(values))}
    return summary


def format_table(per_fold: list[dict[str, float]], summary: dict[str, dict[str, float]]) -> str:
    """Headline metrics (not the per-class ones) by fold, with their mean ± std."""

    names = [n for n in summary if not per_class_metric(n)]
    width = max(len(n) for n in names + ["metric"])
    head = f"{'metric':<{width}}  " + "  ".join(f"{f'fold {k}':>8}" for k in range(1, len(per_fold) + 1))
    lines = [head + "  mean ± std"]
    for name in names:
        cells = "  ".join(f"{fold[name]:>8.4f}" for fold in per_fold)
        lines.append(f"{name:<{width}}  {cells}  {summary[name]['mean']:.4f} ± {summary[name]['std']:.4f}")
    return "\n".join(lines)


def _held_out_metrics(metrics: dict[str, float]) -> dict[str, float]:
    return {key.removeprefix("eval_"): float(value) for key, value in metrics.items()
            if key.startswith("eval_") and key != "eval_samples" and not key.endswith(NOT_METRICS)
            and isinstance(value, (int, float))}


def cross_validate(
    training_args: TrainingArguments,
    ft_args,
    folds: Folds,
    fold: FoldFunction,
    *,
    ids: Sequence,
    config: str | None = None,
) -> dict[str, float]:
    """Train and evaluate one fresh model per fold (see the module docstring), write the results, and return
    ``{cv_<metric>_mean, cv_<metric>_std}`` for every metric. ``folds``: from :func:`plan_folds`; ``ids``: one per
    training row, for the out-of-fold predictions; ``config``: the run's ``config.yaml``
    (:attr:`ftlib.run.steps.RunStart.config`). With ``--cv_only`` the output directory is finished here
    (manifest written, lock released); otherwise the recipe trains the final model next, from the RNG state it
    had before the folds."""

    output_dir = Path(training_args.output_dir)
    main = training_args.process_index == 0
    if main:
        take_output_dir(output_dir, config)  # held from the first fold on, as training would hold it
        shutil.rmtree(output_dir / CV_DIR, ignore_errors=True)  # an earlier cross-validation's folds, if any
    num_rows, split, count = sum(len(held) for held in folds.held_out), folds.method, len(folds.held_out)
    logger.info("cross-validation: %d folds of %d training rows (%s, seed %d)", count, num_rows, split,
                training_args.seed)
    per_fold: list[dict[str, float]] = []
    oof: dict[int, dict[str, str]] = {}
    for k, held in enumerate(folds.held_out, start=1):
        train_rows = np.setdiff1d(np.arange(num_rows), held)
        folder = output_dir / CV_DIR / f"fold-{k}"
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("cross-validation fold %d/%d: training on %d rows, holding out %d", k, count,
                    len(train_rows), len(held))
        set_seed(training_args.seed)  # every fold's model starts as the final one will
        current = fold(fold_args(training_args, folder), train_rows, held)
        trainer = current.trainer
        result = trainer.train()
        trainer.save_metrics("train", dict(result.metrics, train_samples=len(train_rows)))
        trainer.save_state()
        if main:
            for checkpoint in folder.glob("checkpoint-*"):  # --load_best_model_at_end: the fold's model is not kept
                shutil.rmtree(checkpoint, ignore_errors=True)
        if current.held_out_metrics is not None:
            trainer.compute_metrics = current.held_out_metrics
        output = trainer.predict(current.held_out, metric_key_prefix="eval")
        metrics = dict(output.metrics, eval_samples=len(held))
        trainer.log_metrics(f"fold {k} held-out", metrics)
        trainer.save_metrics("eval", metrics)
        per_fold.append(_held_out_metrics(metrics))
        for row, columns in zip(held, current.columns(output.predictions, output.label_ids)):
            oof[int(row)] = {"id": str(ids[row]), "fold": str(k), **columns}
        del current, trainer, output
        gc.collect()
    set_seed(training_args.seed)  # the final model starts from the state it has without cross-validation

    summary = summarize(per_fold)
    results = {f"cv_{name}_{stat}": value[stat] for name, value in summary.items() for stat in ("mean", "std")}
    if main:
        write_results(output_dir, folds, per_fold, summary, training_args.seed)
        write_oof(output_dir / OOF_FILE, [oof[row] for row in range(num_rows)])
        # a new all_results.json (one left by an earlier run in this directory is replaced): the final training's
        # results join it as Trainer saves them
        (output_dir / "all_results.json").write_text(json.dumps(results, indent=4, sort_keys=True) + "\n")
        print(f"cross-validation, {count} folds ({split}), held-out metrics:\n{format_table(per_fold, summary)}")
        if ft_args.cv_only:
            finish(output_dir)
    return results


def write_results(output_dir: Path, folds: Folds, per_fold, summary, seed: int) -> Path:
    path = output_dir / RESULTS_FILE
    rows = int(sum(len(held) for held in folds.held_out))
    document = {
        "folds": len(folds.held_out),
        "split": folds.method,
        "seed": seed,
        "rows": rows,
        "std": "population standard deviation across folds (numpy.std, ddof=0)",
        "per_fold": [{"fold": k, "held_out_rows": len(held), "train_rows": rows - len(held), "metrics": metrics}
                     for k, (held, metrics) in enumerate(zip(folds.held_out, per_fold), start=1)],
        "summary": summary,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def write_oof(path: Path, rows: list[dict[str, str]]) -> Path:
    """The out-of-fold predictions, one row per training row in training-split order."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def finish(output_dir: Path) -> None:
    """``--cv_only``: the output directory is complete (its manifest) and free (its lock released)."""

    write_manifest(output_dir, published=files_to_push(output_dir))
    release_output_dir(output_dir)
    logger.info("--cv_only: no final model; the cross-validation is in %s", output_dir)
