"""Offline metrics for classification, regression and token classification, on scikit-learn, SciPy and seqeval
(no Hub download).

Each ``*_metrics`` function takes predictions and references as arrays and returns a flat dict of
floats, the shape Trainer logs; :func:`compute_metrics_fn` adapts one to Trainer's ``EvalPrediction``.
``--extra_metrics`` adds any ``evaluate`` module next to them (:class:`ExtraMetrics`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import expit, softmax
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)


def single_label_metrics(pred_ids, label_ids, label_names: Sequence[str]) -> dict[str, float]:
    """Accuracy, macro-F1, and precision / recall / F1 per class."""
    labels = list(range(len(label_names)))
    precision, recall, f1, _ = precision_recall_fscore_support(label_ids, pred_ids, labels=labels, zero_division=0)
    metrics = {
        "accuracy": float(accuracy_score(label_ids, pred_ids)),
        "macro_f1": float(f1_score(label_ids, pred_ids, labels=labels, average="macro", zero_division=0)),
    }
    for i, name in enumerate(label_names):
        metrics[f"precision_{name}"] = float(precision[i])
        metrics[f"recall_{name}"] = float(recall[i])
        metrics[f"f1_{name}"] = float(f1[i])
    return metrics


def multi_label_metrics(pred_matrix, label_matrix, label_names: Sequence[str]) -> dict[str, float]:
    """Micro and macro F1 over labels, and exact-match (subset) accuracy."""
    label_matrix = np.asarray(label_matrix).astype(int)
    pred_matrix = np.asarray(pred_matrix).astype(int)
    metrics = {
        "micro_f1": float(f1_score(label_matrix, pred_matrix, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(label_matrix, pred_matrix, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(label_matrix, pred_matrix)),
    }
    per_label = f1_score(label_matrix, pred_matrix, average=None, zero_division=0)
    for name, value in zip(label_names, per_label):
        metrics[f"f1_{name}"] = float(value)
    return metrics


def regression_metrics(predictions, targets) -> dict[str, float]:
    """MSE, MAE, Pearson and Spearman correlation (NaN correlations when either side is constant)."""
    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    targets = np.asarray(targets, dtype=np.float64).reshape(-1)
    constant = np.ptp(predictions) == 0 or np.ptp(targets) == 0
    return {
        "mse": float(mean_squared_error(targets, predictions)),
        "mae": float(mean_absolute_error(targets, predictions)),
        "pearson": float("nan") if constant else float(pearsonr(predictions, targets)[0]),
        "spearman": float("nan") if constant else float(spearmanr(predictions, targets)[0]),
    }


def confusion(pred_ids, label_ids, num_labels: int) -> list[list[int]]:
    """Confusion matrix as nested lists (rows: true label, columns: predicted)."""
    return confusion_matrix(label_ids, pred_ids, labels=list(range(num_labels))).tolist()


def decode_logits(logits, problem_type: str, threshold=0.5):
    """(predictions, scores) from logits: class ids and their softmax probability; a 0/1 matrix and
    sigmoid probabilities for multi-label (``threshold``: one for every label, or one per label, see
    :mod:`ftlib.tasks.thresholds`); the values themselves for regression."""
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits, dtype=np.float64)
    if problem_type == "regression":
        values = logits.reshape(len(logits), -1)[:, 0]
        return values, values
    if problem_type == "multi_label_classification":
        probs = expit(logits)
        return (probs >= threshold).astype(int), probs
    probs = softmax(logits, axis=-1)
    ids = probs.argmax(axis=-1)
    return ids, probs[np.arange(len(ids)), ids]


class ClassificationMetrics:
    """A Trainer ``compute_metrics`` for the problem type (see :func:`compute_metrics_fn`). ``thresholds``:
    the multi-label decision thresholds (0.5 until :func:`ftlib.run.steps.tune_thresholds` sets the tuned ones)."""

    def __init__(self, problem_type: str, label_names: Sequence[str], extra: ExtraMetrics | None = None):
        self.problem_type, self.label_names, self.extra = problem_type, label_names, extra
        self.thresholds = 0.5

    def __call__(self, eval_pred) -> dict[str, float]:
        problem_type = self.problem_type
        preds, _ = decode_logits(eval_pred.predictions, problem_type, self.thresholds)
        refs = eval_pred.label_ids
        if problem_type == "regression":
            metrics = regression_metrics(preds, refs)
        elif problem_type == "multi_label_classification":
            metrics = multi_label_metrics(preds, refs, self.label_names)
            preds, refs = np.asarray(preds).astype(int), np.asarray(refs).astype(int)
        else:
            metrics = single_label_metrics(preds, refs, self.label_names)
        if self.extra is not None:
            metrics.update(self.extra(preds, refs, metrics))
        return metrics


def compute_metrics_fn(problem_type: str, label_names: Sequence[str], extra: ExtraMetrics | None = None) -> Callable:
    """A Trainer ``compute_metrics`` for the problem type; ``extra`` (``--extra_metrics``) adds evaluate modules,
    given predicted and true class ids (0/1 rows for multi-label, values for regression)."""
    return ClassificationMetrics(problem_type, label_names, extra)


def token_cls_metrics(
    true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], scheme: str
) -> dict[str, float]:
    """Entity-level precision/recall/f1 (seqeval) overall and per type, plus token accuracy.

    BIO and BIOES are scored in seqeval's strict mode (an entity counts only if it is well formed
    under the scheme); IOB1 and IO in its default, conlleval-compatible mode. Keys: `precision`,
    `recall`, `f1`, `accuracy`, and per type `PER_precision`, `PER_recall`, `PER_f1`, `PER_support`.
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2, IOBES

    if len(true_tags) != len(pred_tags) or any(len(t) != len(p) for t, p in zip(true_tags, pred_tags)):
        raise ValueError("true_tags and pred_tags must have the same sentences and lengths")
    kwargs: dict[str, Any] = {}
    if scheme in ("BIO", "BIOES"):
        kwargs = {"mode": "strict", "scheme": IOB2 if scheme == "BIO" else IOBES}
    true_list, pred_list = [list(t) for t in true_tags], [list(p) for p in pred_tags]
    with warnings.catch_warnings():
        # no entity at all makes seqeval's macro average a mean of nothing; we only read micro
        warnings.simplefilter("ignore", RuntimeWarning)
        report = classification_report(true_list, pred_list, output_dict=True, zero_division=0, **kwargs)
    micro = report["micro avg"]
    result = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": float(
            accuracy_score([t for s in true_list for t in s], [p for s in pred_list for p in s])
        ),
    }
    for kind, scores in sorted(report.items()):
        if kind.endswith(" avg"):
            continue
        result[f"{kind}_precision"] = float(scores["precision"])
        result[f"{kind}_recall"] = float(scores["recall"])
        result[f"{kind}_f1"] = float(scores["f1-score"])
        result[f"{kind}_support"] = int(scores["support"])
    return result


class WordMetrics:
    """Trainer ``compute_metrics`` on the words of one split (build one per split: the predictions Trainer hands
    over are those of the split being evaluated). Trainer gives window-level predictions (argmax ids, in dataset
    order); each word is read once, from the window that labels it, so the entity scores are those of the original
    sentences (:func:`token_cls_metrics`). ``extra`` (``--extra_metrics``) gets the predicted and true tags of every
    sentence, as seqeval-style lists of tag strings."""

    def __init__(self, sentences, windows, id2label: dict[int, str], scheme: str, extra: ExtraMetrics | None = None):
        self.sentences, self.windows, self.id2label = sentences, windows, id2label
        self.scheme, self.extra = scheme, extra

    def tags(self, pred_ids) -> list[list[str]]:
        """The predicted tag of every word of every sentence of the split."""
        from ftlib.data.token import words_predictions

        pred_ids = pred_ids[0] if isinstance(pred_ids, tuple) else pred_ids  # (ids, probabilities): report
        return words_predictions(pred_ids, self.windows, len(self.sentences), self.id2label)

    def __call__(self, eval_pred) -> dict[str, float]:
        predicted = self.tags(eval_pred.predictions)
        gold = self.sentences["tags"]
        metrics = token_cls_metrics(gold, predicted, self.scheme)
        if self.extra is not None:
            metrics.update(self.extra(predicted, gold, metrics))
        return metrics


logger = logging.getLogger(__name__)


class ExtraMetrics:
    """``evaluate`` modules computed at every evaluation next to the built-in metrics (``--extra_metrics``).

    Each result key is logged as ``<module>`` when it is the module's name, else ``<module>_<key>``
    (``evaluate_`` in front when a built-in metric has that name); nested dicts are flattened with ``_``, and
    values that are not numbers (per-class arrays) are left out, with a warning."""

    def __init__(self, modules: dict[str, Any]):
        self.modules = modules  # what the user named -> loaded module
        self._warned: set[str] = set()

    def __call__(self, predictions, references, builtin: dict[str, float] | None = None) -> dict[str, float]:
        out: dict[str, float] = {}
        for given, module in self.modules.items():
            try:
                result = module.compute(predictions=list(predictions), references=list(references))
            except Exception as err:  # noqa: BLE001 - any failure inside a user's module: name it and the flag
                raise ValueError(f"--extra_metrics {given}: the evaluate module failed: {type(err).__name__}: {err}") \
                    from None
            for key, value in _flatten(result or {}).items():
                name = module.name if key == module.name else f"{module.name}_{key}"
                name = f"evaluate_{name}" if name in (builtin or {}) else name
                if isinstance(value, (bool, int, float, np.integer, np.floating)):
                    out[name] = float(value)
                elif name not in self._warned:
                    self._warned.add(name)
                    logger.warning("--extra_metrics %s: '%s' is not a number (%s); not logged", given, key,
                                   type(value).__name__)
        return out


def _flatten(result: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}_"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_extra_metrics(names: Sequence[str] | None) -> ExtraMetrics | None:
    """Load ``--extra_metrics`` with ``evaluate.load``: a Hub name (online), or a local module script or folder.
    A module that does not load is an error naming it, raised before any data or model loads."""
    if not names:
        return None
    import evaluate

    modules = {}
    for name in names:
        try:
            modules[name] = evaluate.load(name)
        except Exception as err:  # noqa: BLE001 - missing file, offline Hub, a broken script: all name the module
            raise ValueError(f"--extra_metrics {name}: cannot load the evaluate module ({type(err).__name__}: {err})") \
                from None
    return ExtraMetrics(modules)


def default_metric(problem_type: str) -> tuple[str, bool]:
    """(metric_for_best_model, greater_is_better) for a problem type."""
    return {
        "regression": ("mse", False),
        "multi_label_classification": ("micro_f1", True),
    }.get(problem_type, ("accuracy", True))


def eval_key(metric: str) -> str:
    """The key of ``metric`` (``metric_for_best_model``, with or without ``eval_``) in Trainer's evaluation results."""
    return metric if metric.startswith("eval_") else f"eval_{metric}"


NOT_PER_CLASS = ("macro", "micro", "weighted")  # averages, not classes


def per_class_metric(key: str) -> bool:
    """Whether a metric name is a per-class or per-type figure (``eval_f1_pos``, ``eval_PER_recall``), which the
    model card leaves to the report, not a headline one (``eval_macro_f1``, ``eval_f1``)."""
    name = key.split("_", 1)[1] if key.startswith(("eval_", "test_")) else key
    head, _, rest = name.partition("_")
    if head in ("precision", "recall", "f1") and rest and rest not in NOT_PER_CLASS:
        return True
    base, _, tail = name.rpartition("_")
    return bool(base) and tail in ("precision", "recall", "f1", "support") and base not in NOT_PER_CLASS
