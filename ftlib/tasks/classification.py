"""What text and image classification share after training: one label (or labels, or a value) per row from the
model's logits, written by ``ftlib-predict`` as csv or JSON lines, multi-label thresholds included."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ftlib.tasks.base import PredictError, atomic_file, inference_batches, plain

logger = logging.getLogger("ftlib.outputs.predict")

MULTI, REGRESSION = "multi_label_classification", "regression"
OUTPUT_SUFFIXES = (".csv", ".jsonl")


def usable_id_column(data, settings: dict[str, Any], source: str, given: bool, fallback: str) -> str | None:
    """The id column to read: ``settings["id_column"]``, or None where that column came from the run's config (not a
    flag: ``given`` False) and the input lacks it, since new data rarely carries the training set's ids; said once,
    with what names the rows instead (``fallback``). A column asked for by a flag must exist."""
    column = settings["id_column"]
    if column is None or given or column in data.column_names:
        return column
    logger.warning("%s has no column '%s' (the run's --id_column): the predictions are identified by %s instead; "
                   "--id_column names another column", source, column, fallback)
    return None


def check_predict(folder, options: dict[str, Any]) -> None:
    """``--threshold`` applies to multi-label models only."""
    if options.get("threshold") is not None and folder.problem_type != MULTI:
        raise PredictError(f"--threshold applies to multi-label models; {folder.path} is {folder.problem_type}")


def thresholds_for(folder, threshold: float | None):
    """Multi-label decision thresholds: ``--threshold``, else the tuned ones saved with the model
    (thresholds.json), else 0.5 for every label."""
    from ftlib.tasks.thresholds import THRESHOLDS_FILE, read_thresholds

    if folder.problem_type != MULTI:
        return 0.5
    saved = read_thresholds(folder.path, folder.labels)
    if threshold is None and saved is None:
        logger.warning("%s has no %s: every label at 0.5", folder.path, THRESHOLDS_FILE)
    return threshold if threshold is not None else (saved if saved is not None else 0.5)


def predict_with_loader(model, folder, loader, ids: Sequence, output: Path, options: dict[str, Any]) -> None:
    """Logits for every batch of ``loader`` (one row per input row, in order), written to ``output``."""
    out = [model(**batch).logits.float().cpu().numpy()
           for batch in inference_batches(loader, options["device"], options["progress"])]
    logits = np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)
    if len(logits) != len(ids):  # never: one prediction per row, in order
        raise RuntimeError(f"{len(logits)} predictions for {len(ids)} rows")
    write_class_predictions(output, ids, logits, folder, thresholds_for(folder, options.get("threshold")))


def write_class_predictions(path: Path, ids: Sequence, logits: np.ndarray, folder, thresholds=0.5) -> None:
    """One row per input row: ``id, label, score, prob_<label>...`` (csv) or objects (jsonl). Multi-label: every
    label whose probability reaches its threshold, ``;``-joined; regression: ``id, value``."""
    from scipy.special import softmax

    from ftlib.tasks.metrics import decode_logits

    names, problem = folder.labels, folder.problem_type
    preds, probs = decode_logits(logits, problem, thresholds)
    if problem == REGRESSION:
        rows = [{"id": plain(i), "value": float(v)} for i, v in zip(ids, preds)]
    else:
        if problem != MULTI:  # every class's probability, not only the predicted one's
            probs = softmax(np.asarray(logits, dtype=np.float64), axis=-1)
        rows = []
        for row_id, pred, p in zip(ids, preds, probs):
            if problem == MULTI:
                chosen = [j for j, on in enumerate(pred) if on]
                label, score = [names[j] for j in chosen], [float(p[j]) for j in chosen]
            else:
                label, score = names[int(pred)], float(p[int(pred)])
            rows.append({"id": plain(row_id), "label": label, "score": score,
                         "probs": {name: float(v) for name, v in zip(names, p)}})
    with atomic_file(path) as partial, partial.open("w", newline="", encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            return
        writer = csv.writer(handle)
        if problem == REGRESSION:
            writer.writerow(["id", "value"])
            writer.writerows([row["id"], f"{row['value']:.6g}"] for row in rows)
            return
        writer.writerow(["id", "label", "score", *(f"prob_{name}" for name in names)])
        for row in rows:
            if problem == MULTI:
                label, score = ";".join(row["label"]), ";".join(f"{s:.6f}" for s in row["score"])
            else:
                label, score = row["label"], f"{row['score']:.6f}"
            writer.writerow([row["id"], label, score, *(f"{v:.6f}" for v in row["probs"].values())])
