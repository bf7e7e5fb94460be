"""Per-label decision thresholds for multi-label classification.

A multi-label head gives each label a sigmoid probability; 0.5 is rarely the best cut for every label (rare
labels get low probabilities). At the end of training the recipes tune one threshold per label on the
validation split, the one with the best F1 for that label, and save them beside the model as
``thresholds.json`` (in the manifest, pushed with the model). The recipe's test predictions and
``ftlib-predict`` then apply them; a model without the file uses 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
MULTI = "multi_label_classification"


def thresholds_wanted(flag: bool | None, problem_type: str) -> bool:
    """Whether to tune: ``--tune_thresholds`` unset means yes for multi-label; set true for another problem
    type it is an error (checked as soon as the labels are known, before the model loads)."""
    if flag and problem_type != MULTI:
        raise ValueError(f"--tune_thresholds applies to multi-label classification; these labels are {problem_type} "
                         "(several labels per row, or --label_separator, make them multi-label)")
    return problem_type == MULTI and flag is not False


def _f1(tp: np.ndarray, predicted: np.ndarray, positives: int) -> np.ndarray:
    return np.where(predicted + positives > 0, 2 * tp / np.maximum(predicted + positives, 1), 0.0)


def best_threshold(probs: Sequence[float], truth: Sequence[float]) -> tuple[float, float, float]:
    """``(threshold, F1 at 0.5, F1 at the threshold)`` for one label: of the cuts half-way between consecutive
    distinct probabilities (and 0.5), the one with the best F1, ties to the one nearest 0.5. A label without a
    positive example keeps 0.5 (no cut can be judged)."""
    probs = np.asarray(probs, dtype=np.float64)
    truth = np.asarray(truth) > 0.5
    positives = int(truth.sum())
    at_default = float(_f1(np.array([(truth & (probs >= DEFAULT_THRESHOLD)).sum()]),
                           np.array([(probs >= DEFAULT_THRESHOLD).sum()]), positives)[0])
    if positives == 0 or len(probs) == 0:
        return DEFAULT_THRESHOLD, at_default, at_default
    order = np.argsort(-probs, kind="stable")
    ranked, hits = probs[order], truth[order]
    # predicting the top k (k = 0..n) as positive: a cut exists between ranks k-1 and k when their values differ
    upper = np.concatenate([[1.0], ranked])
    lower = np.concatenate([ranked, [0.0]])
    cuts = (upper + lower) / 2
    valid = upper > lower
    tp = np.concatenate([[0], np.cumsum(hits)])
    predicted = np.arange(len(probs) + 1)
    cuts = np.concatenate([cuts[valid], [DEFAULT_THRESHOLD]])
    scores = np.concatenate([_f1(tp[valid], predicted[valid], positives), [at_default]])
    best = scores.max()
    candidates = np.flatnonzero(scores >= best - 1e-12)
    chosen = candidates[np.argmin(np.abs(cuts[candidates] - DEFAULT_THRESHOLD))]
    return float(cuts[chosen]), at_default, float(scores[chosen])


def tune_thresholds(probs, label_matrix, names: Sequence[str], split: str = "validation") -> dict:
    """Tune a threshold per label (:func:`best_threshold`) on ``probs`` (rows x labels, sigmoid probabilities)
    against the 0/1 ``label_matrix``: the content of ``thresholds.json``."""
    probs = np.asarray(probs, dtype=np.float64)
    label_matrix = np.asarray(label_matrix)
    if probs.shape != label_matrix.shape or probs.shape[1] != len(names):
        raise ValueError(f"probabilities {probs.shape}, labels {label_matrix.shape} and {len(names)} label names disagree")
    thresholds, f1 = {}, {}
    for j, name in enumerate(names):
        cut, before, after = best_threshold(probs[:, j], label_matrix[:, j])
        thresholds[name] = round(cut, 6)
        f1[name] = {"at_0.5": round(before, 6), "tuned": round(after, 6), "positives": int((label_matrix[:, j] > 0.5).sum())}
    return {"thresholds": thresholds, "tuned_on": split, "rows": len(probs), "objective": "F1 of each label",
            "f1": f1}


def write_thresholds(output_dir: str | Path, tuned: dict) -> Path:
    path = Path(output_dir) / THRESHOLDS_FILE
    path.write_text(json.dumps(tuned, indent=1) + "\n", encoding="utf-8")
    return path


def read_thresholds(model_dir: str | Path, names: Sequence[str]) -> np.ndarray | None:
    """The thresholds saved with a model, one per label in ``names`` order; None when it has none. A file whose
    labels are not the model's is an error naming both."""
    path = Path(model_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))["thresholds"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is unreadable: {err}") from None
    if sorted(saved) != sorted(names):
        raise ValueError(f"{path} has thresholds for {', '.join(saved)} but the model's labels are {', '.join(names)}")
    return np.array([float(saved[name]) for name in names])
