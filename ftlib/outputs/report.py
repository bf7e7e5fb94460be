"""The training report: ``report/`` in every output directory, PNG figures and a top-losses table.

- ``losses.png``: training loss (raw and smoothed) and evaluation loss against steps
- ``metric.png``: the headline metric at each evaluation; ``grad_norm.png``: the gradient norm
- ``learning_rates.png``: every optimizer group's learning rate (log scale; logged by
  :mod:`ftlib.training.tracking`), dashed where gradual unfreezing (or the head warm-up) switched a stage on
- ``confusion_matrix.png`` and ``class_scores.png`` (single-label text and image: counts, and precision / recall /
  F1 per class) or ``entity_scores.png`` (tokens: the same per entity type)
- ``top_losses.md`` (text, tokens) or ``top_losses.png`` (images): the validation examples the model gets most wrong
- ``calibration.png``: reliability diagram and expected calibration error (classification)
- ``predictions.npz``: the validation predictions the last four are drawn from

Each figure's data comes from a function of its own (``*_curve(s)``, ``confusion_data``, ...), tested against
``log_history`` and the predictions. At the end of a run the recipes write it (main process only, from
:func:`ftlib.run.steps.publish`); ``ftlib-report DIR`` regenerates it from a finished output or a checkpoint folder
(``trainer_state.json``, and ``report/predictions.npz`` when there is one) without loading the model.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ftlib.tasks.metrics import eval_key
from ftlib.training.tracking import LR_PREFIX, STAGE_KEY

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
PREDICTIONS = "predictions.npz"
TOP_K = 16


# -- curves, from log_history -------------------------------------------------------------------------------
SMOOTHING_HALF_LIFE = 10  # optimizer steps after which a logged loss weighs half as much in the smoothed curve


def smooth(steps: Sequence[float], values: Sequence[float], half_life: float = SMOOTHING_HALF_LIFE) -> list[float]:
    """Exponential moving average of ``values`` logged at ``steps``, its window counted in optimizer steps: a value
    weighs half as much ``half_life`` steps later, however often the run logs (a logged loss is already the mean
    over its logging interval). The average starts empty at step 0 and is debiased (divided by the weight it holds,
    ``1 - beta ** t`` for evenly spaced points, as fastai's ``SmoothenValue``): each output is a weighted mean of the
    values so far, so a constant stays constant from the first point and the curve never leaves the raw range."""
    out: list[float] = []
    total = weight = 0.0
    previous = 0.0
    for step, value in zip(steps, values):
        decay = 0.5 ** (max(1.0, step - previous) / half_life)  # two logs at one step: one step apart
        total = decay * total + (1 - decay) * value
        weight = decay * weight + (1 - decay)
        out.append(total / weight)
        previous = step
    return out


def _series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    rows = [(row["step"], float(row[key])) for row in log_history if key in row and "step" in row]
    return [s for s, _ in rows], [v for _, v in rows]


def loss_curves(log_history: list[dict], half_life: float = SMOOTHING_HALF_LIFE) -> dict[str, list]:
    """Training loss by logging step (raw and smoothed over ``half_life`` steps, :func:`smooth`) and evaluation loss
    by evaluation step."""
    steps, loss = _series(log_history, "loss")
    eval_steps, eval_loss = _series(log_history, "eval_loss")
    return {"steps": steps, "loss": loss, "smoothed": smooth(steps, loss, half_life), "eval_steps": eval_steps,
            "eval_loss": eval_loss}


def metric_curve(log_history: list[dict], metric: str) -> dict[str, Any]:
    """The evaluation metric ``metric`` (with or without ``eval_``) at each evaluation."""
    key = eval_key(metric)
    steps, values = _series(log_history, key)
    return {"name": key, "steps": steps, "values": values}


def grad_norm_curve(log_history: list[dict]) -> dict[str, Any]:
    steps, values = _series(log_history, "grad_norm")
    return {"steps": steps, "values": values}


def lr_curves(log_history: list[dict]) -> dict[str, dict[str, list]]:
    """``{group: {"steps", "values"}}`` from the ``lr/<group>`` entries, groups in the order first logged
    (without them, Trainer's single ``learning_rate``)."""
    keys: list[str] = []
    for row in log_history:
        keys += [k for k in row if k.startswith(LR_PREFIX) and k not in keys]
    if not keys and any("learning_rate" in row for row in log_history):
        keys = ["learning_rate"]
    out = {}
    for key in keys:
        steps, values = _series(log_history, key)
        out[key.removeprefix(LR_PREFIX)] = {"steps": steps, "values": values}
    return out


def unfreeze_schedule(state: dict) -> dict[str, Any] | None:
    """``{"every", "unit", "stages"}`` of the run's gradual unfreezing (or head warm-up) from a
    ``trainer_state.json``'s ``stateful_callbacks``, or None."""
    saved = (state.get("stateful_callbacks") or {}).get("GradualUnfreezeCallback")
    if isinstance(saved, list):
        saved = saved[-1] if saved else None
    if not saved:
        return None
    args = saved.get("args", {})
    return {"every": int(args["every"]), "unit": args["unit"], "stages": len(args["stages"])}


def unfreeze_marks(log_history: list[dict], schedule: dict[str, Any] | None = None) -> list[dict[str, int]]:
    """``[{"step", "stage"}]``: where each stage after the first was switched on. With the ``schedule`` the
    steps are exact (stage k starts after ``(k-1) * every`` steps, or epochs converted with the logged
    steps per epoch), up to the last logged step; without it, the first log showing the stage."""
    last_step = max((row.get("step", 0) for row in log_history), default=0)
    if schedule is not None:
        every, unit = schedule["every"], schedule["unit"]
        per_epoch = None
        if unit == "epoch":
            rows = [r for r in log_history if r.get("epoch") and r.get("step")]
            if not rows:
                return []
            far = max(rows, key=lambda r: r["epoch"])
            per_epoch = far["step"] / far["epoch"]
        marks = []
        for stage in range(2, schedule["stages"] + 1):
            position = (stage - 1) * every
            step = position if unit == "step" else round(position * per_epoch)
            if step >= last_step:
                break
            marks.append({"step": step, "stage": stage})
        return marks
    marks, seen = [], 1
    for row in log_history:
        stage = row.get(STAGE_KEY)
        if stage is not None and stage > seen:
            marks.append({"step": int(row["step"]), "stage": int(stage)})
            seen = stage
    return marks


# -- from the validation predictions -------------------------------------------------------------------------
def confusion_data(pred_ids, label_ids, label_names: Sequence[str]) -> dict[str, Any]:
    """Counts, rows the true label and columns the predicted one."""
    from ftlib.tasks.metrics import confusion

    return {"labels": list(label_names), "matrix": confusion(pred_ids, label_ids, len(label_names))}


def class_scores(pred_ids, label_ids, label_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{class: {"precision", "recall", "f1", "support"}}`` (scikit-learn, as the run's per-class metrics): the
    per-class figures the model card leaves to the report."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        label_ids, pred_ids, labels=list(range(len(label_names))), zero_division=0)
    return {str(name): {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                        "support": float(support[i])} for i, name in enumerate(label_names)}


def calibration_data(confidence, outcome, bins: int = 10) -> dict[str, Any]:
    """Reliability diagram data: per equal-width confidence bin, the mean confidence, the mean outcome
    (1 = correct) and the count; ``ece``: the count-weighted mean gap between the two."""
    confidence, outcome = np.asarray(confidence, dtype=np.float64), np.asarray(outcome, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    conf, acc, count, ece = [], [], [], 0.0
    for b in range(bins):
        chosen = index == b
        n = int(chosen.sum())
        count.append(n)
        conf.append(float(confidence[chosen].mean()) if n else 0.0)
        acc.append(float(outcome[chosen].mean()) if n else 0.0)
        ece += n / max(1, len(confidence)) * abs(acc[-1] - conf[-1])
    return {"bin_edges": edges.tolist(), "confidence": conf, "accuracy": acc, "count": count, "ece": float(ece)}


def example_outcomes(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per validation example: ``pred`` (class id, 0/1 row or value), ``prob`` (the prediction's
    probability), ``loss`` (cross-entropy of the true label, summed over labels for multi-label, squared
    error for regression), and ``confidence`` / ``outcome`` for calibration."""
    problem = str(predictions["problem_type"])
    labels = predictions["labels"]
    if problem == "regression":
        values = predictions["values"].reshape(len(labels), -1)[:, 0]
        return {"pred": values, "prob": np.full(len(values), np.nan), "loss": (values - labels) ** 2}
    probs = predictions["probs"].astype(np.float64)
    eps = 1e-12
    if problem == "multi_label_classification":
        labels = labels.astype(np.float64)
        loss = -(labels * np.log(probs + eps) + (1 - labels) * np.log(1 - probs + eps)).sum(axis=1)
        pred = (probs >= 0.5).astype(int)
        prob = np.where(pred == 1, probs, 1 - probs).min(axis=1)  # the least sure of its decisions
        return {"pred": pred, "prob": prob, "loss": loss, "confidence": probs.ravel(), "outcome": labels.ravel()}
    labels = labels.astype(int)
    pred = probs.argmax(axis=1)
    rows = np.arange(len(labels))
    return {"pred": pred, "prob": probs[rows, pred], "loss": -np.log(probs[rows, labels] + eps),
            "confidence": probs[rows, pred], "outcome": (pred == labels).astype(float)}


def top_losses(losses, k: int = TOP_K) -> list[int]:
    """Indices of the ``k`` largest losses, largest first (ties in index order)."""
    losses = np.asarray(losses, dtype=np.float64)
    return [int(i) for i in np.argsort(-losses, kind="stable")[:k]]


def word_values(values, windows, num_examples: int) -> list[list[float]]:
    """Window-level values (``values[k, p]``, as the ids of :func:`ftlib.data.token.words_predictions`) read
    per word of each sentence, at its first sub-token in the window that labels it (NaN for a word no window
    labels)."""
    values = np.asarray(values)
    out: list[list[float] | None] = [None] * num_examples
    for k, (ex, ids, labels, n) in enumerate(zip(windows["example_index"], windows["word_ids"], windows["labels"],
                                                 windows["num_words"])):
        if out[ex] is None:
            out[ex] = [math.nan] * n
        words = out[ex]
        for p, (w, label) in enumerate(zip(ids, labels)):
            if w >= 0 and label != -100 and math.isnan(words[w]):
                words[w] = float(values[k, p])
    return [row or [] for row in out]


def sentence_tags(predictions: dict[str, np.ndarray]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold and predicted tag strings per sentence, from the word-level arrays of a token report."""
    names = [str(n) for n in predictions["label_names"]]
    sentence = predictions["word_sentence"]
    count = int(predictions["num_sentences"])
    gold: list[list[str]] = [[] for _ in range(count)]
    pred: list[list[str]] = [[] for _ in range(count)]
    for s, g, p in zip(sentence, predictions["word_gold"], predictions["word_pred"]):
        gold[s].append(names[g])
        pred[s].append(names[p])
    return gold, pred


def entity_scores(gold_tags, pred_tags, scheme: str) -> dict[str, dict[str, float]]:
    """``{type: {"precision", "recall", "f1", "support"}}`` per entity type (seqeval, as the run's metrics)."""
    from ftlib.tasks.metrics import token_cls_metrics

    metrics = token_cls_metrics(gold_tags, pred_tags, scheme)
    types = sorted({k[: -len("_support")] for k in metrics if k.endswith("_support")})
    return {t: {key: float(metrics[f"{t}_{key}"]) for key in ("precision", "recall", "f1", "support")} for t in types}


def sentence_losses(predictions: dict[str, np.ndarray]) -> np.ndarray:
    """Per sentence: the summed cross-entropy of its words' true tags."""
    out = np.zeros(int(predictions["num_sentences"]))
    np.add.at(out, predictions["word_sentence"], -np.log(predictions["word_gold_prob"].astype(np.float64) + 1e-12))
    return out


# -- collecting the predictions at the end of a run ------------------------------------------------------------
@dataclass
class EvalExamples:
    """The validation rows the run's last evaluation predicted, as a recipe hands them to :func:`ftlib.run.steps.publish`:
    ``kind`` is ``text``, ``image`` or ``tokens``; ``rows`` the raw split; ``columns`` what to show of a row
    (text columns, the image column); ``windows`` and ``scheme`` for tokens."""

    kind: str
    rows: Any
    columns: list[str] = field(default_factory=list)
    windows: Any = None
    scheme: str | None = None

    @classmethod
    def text(cls, rows, *columns: str | None) -> EvalExamples:
        return cls("text", rows, [c for c in columns if c])

    @classmethod
    def image(cls, rows, column: str) -> EvalExamples:
        return cls("image", rows, [column])

    @classmethod
    def tokens(cls, rows, windows, scheme: str) -> EvalExamples:
        return cls("tokens", rows, ["tokens"], windows, scheme)

    def shown(self) -> list[str]:
        """One string per row: the text (pairs joined by `` || ``), the words, or the image's path."""
        if self.kind == "tokens":
            return [" ".join(words) for words in self.rows["tokens"]]
        if self.kind == "image":
            return [_image_path(item) for item in self.rows[self.columns[0]]]
        columns = [self.rows[c] for c in self.columns]
        return [" || ".join(str(v) for v in values) for values in zip(*columns)]


def _image_path(item) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        return str(item.get("path") or "")
    return str(getattr(item, "filename", "") or "")


def argmax_with_probs(logits, labels):
    """Token ``preprocess_logits_for_metrics``: per position the predicted id, its probability and the true
    tag's probability (0 where there is no label), instead of [windows, tokens, tags] floats."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    probs = logits.float().softmax(dim=-1)
    pred_prob, pred = probs.max(dim=-1)
    gold_prob = probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != -100)
    return pred, pred_prob, gold_prob


def collect_predictions(output, examples: EvalExamples, label_names: Sequence[str], problem_type: str,
                        scheme: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of ``predictions.npz`` from an ``EvalLoopOutput`` of the validation split."""
    from scipy.special import expit, softmax

    preds = output.predictions
    out: dict[str, Any] = {"kind": examples.kind, "problem_type": problem_type,
                           "label_names": np.array([str(n) for n in label_names]),
                           "examples": np.array(examples.shown(), dtype=str)}
    if examples.kind == "tokens":
        ids, pred_prob, gold_prob = preds
        count = len(examples.rows)
        per_word = [word_values(v, examples.windows, count) for v in (ids, pred_prob, gold_prob)]
        label2id = {n: i for i, n in enumerate(label_names)}
        gold = [[label2id[t] for t in tags] for tags in examples.rows["tags"]]
        sentence = [s for s, words in enumerate(per_word[0]) for _ in words]
        flat = [np.array([v for row in values for v in row]) for values in per_word]
        keep = ~np.isnan(flat[0])  # a word the tokenizer dropped has no prediction
        out.update(num_sentences=count, scheme=scheme or examples.scheme or "BIO",
                   word_sentence=np.array(sentence, dtype=np.int64)[keep],
                   word_gold=np.array([g for row in gold for g in row], dtype=np.int64)[keep],
                   word_pred=flat[0][keep].astype(np.int64), word_prob=flat[1][keep].astype(np.float32),
                   word_gold_prob=flat[2][keep].astype(np.float32))
        return out
    logits = np.asarray(preds[0] if isinstance(preds, tuple) else preds, dtype=np.float64)
    out["labels"] = np.asarray(output.label_ids)
    if problem_type == "regression":
        out["values"] = logits.astype(np.float32)
    elif problem_type == "multi_label_classification":
        out["probs"] = expit(logits).astype(np.float32)
    else:
        out["probs"] = softmax(logits, axis=-1).astype(np.float32)
    return out


def save_predictions(path: Path, predictions: dict[str, Any]) -> Path:
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in predictions.items()})
    return path


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


# -- writing -----------------------------------------------------------------------------------------------------
def _md(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def top_losses_table(predictions: dict[str, np.ndarray], k: int = TOP_K) -> str:
    """Markdown: the ``k`` validation examples with the largest loss, with label, prediction and probability."""
    names = [str(n) for n in predictions["label_names"]]
    shown = [str(s) for s in predictions["examples"]]
    lines = ["| # | example | label | prediction | probability | loss |", "|---|---|---|---|---|---|"]
    if str(predictions["kind"]) == "tokens":
        losses = sentence_losses(predictions)
        sentence = predictions["word_sentence"]
        for rank, s in enumerate(top_losses(losses, k), 1):
            words = np.flatnonzero(sentence == s)
            wrong = [w for w in words if predictions["word_pred"][w] != predictions["word_gold"][w]]
            picked = wrong or [min(words, key=lambda w: predictions["word_gold_prob"][w])] if len(words) else []
            first = int(words[0]) if len(words) else 0
            tokens = shown[s].split(" ")
            label = ", ".join(f"{tokens[w - first]}: {names[predictions['word_gold'][w]]}" for w in picked)
            pred = ", ".join(f"{tokens[w - first]}: {names[predictions['word_pred'][w]]}" for w in picked)
            prob = ", ".join(f"{predictions['word_prob'][w]:.2f}" for w in picked)
            lines.append(f"| {rank} | {_md(shown[s])} | {_md(label)} | {_md(pred)} | {prob} | {losses[s]:.3f} |")
        return "\n".join(lines) + "\n"
    outcome = example_outcomes(predictions)
    problem = str(predictions["problem_type"])
    labels = predictions["labels"]

    def name(value) -> str:
        if problem == "regression":
            return f"{float(value):.4g}"
        if problem == "multi_label_classification":
            return ";".join(names[i] for i, on in enumerate(value) if on) or "(none)"
        return names[int(value)]

    for rank, i in enumerate(top_losses(outcome["loss"], k), 1):
        prob = "" if problem == "regression" else f"{outcome['prob'][i]:.3f}"
        lines.append(f"| {rank} | {_md(shown[i])} | {_md(name(labels[i]))} | {_md(name(outcome['pred'][i]))} | "
                     f"{prob} | {outcome['loss'][i]:.3f} |")
    return "\n".join(lines) + "\n"


def _open_image(item):
    from PIL import Image

    if isinstance(item, dict):
        item = item.get("bytes") or item.get("path")
    if isinstance(item, (bytes, bytearray)):
        import io

        item = io.BytesIO(item)
    if isinstance(item, (str, Path)) and not Path(item).is_file():
        return None
    image = item if hasattr(item, "convert") else Image.open(item)
    image = image.convert("RGB")
    image.thumbnail((128, 128))
    return image


def write_report(
    output_dir: str | Path,
    log_history: list[dict],
    *,
    metric: str | None = None,
    predictions: dict[str, np.ndarray] | None = None,
    schedule: dict[str, Any] | None = None,
    images: Sequence | None = None,
) -> list[Path]:
    """Write ``report/`` into ``output_dir``; returns the files written (figures first, in card order).
    ``images``: the validation images (for the top-losses grid; their paths in ``predictions`` otherwise)."""
    from ftlib.outputs import report_plots as plots

    root = Path(output_dir) / REPORT_DIR
    root.mkdir(parents=True, exist_ok=True)
    written = [plots.plot_losses(loss_curves(log_history), root / "losses.png")]
    if metric:
        curve = metric_curve(log_history, metric)
        if curve["steps"]:
            written.append(plots.plot_series(curve, root / "metric.png", f"{curve['name']} per evaluation",
                                             curve["name"]))
    norm = grad_norm_curve(log_history)
    if norm["steps"]:
        written.append(plots.plot_series(norm, root / "grad_norm.png", "Gradient norm", "grad_norm", "-"))
    rates = lr_curves(log_history)
    if rates:
        written.append(plots.plot_learning_rates(rates, unfreeze_marks(log_history, schedule),
                                                 root / "learning_rates.png"))
    if predictions is not None:
        written += _prediction_figures(root, predictions, images)
    return written


def _prediction_figures(root: Path, predictions: dict[str, np.ndarray], images: Sequence | None) -> list[Path]:
    from ftlib.outputs import report_plots as plots

    kind, problem = str(predictions["kind"]), str(predictions["problem_type"])
    names = [str(n) for n in predictions["label_names"]]
    written = []
    if kind == "tokens":
        gold, pred = sentence_tags(predictions)
        scores = entity_scores(gold, pred, str(predictions["scheme"]))
        if scores:
            written.append(plots.plot_class_scores(scores, root / "entity_scores.png", "Per entity type (validation)"))
        correct = (predictions["word_pred"] == predictions["word_gold"]).astype(float)
        written.append(plots.plot_calibration(calibration_data(predictions["word_prob"], correct),
                                              root / "calibration.png"))
    else:
        outcome = example_outcomes(predictions)
        if problem == "single_label_classification":
            written.append(plots.plot_confusion(confusion_data(outcome["pred"], predictions["labels"], names),
                                                root / "confusion_matrix.png"))
            written.append(plots.plot_class_scores(class_scores(outcome["pred"], predictions["labels"], names),
                                                   root / "class_scores.png", "Per class (validation)"))
        if "confidence" in outcome:
            label = "fraction positive" if problem == "multi_label_classification" else "accuracy"
            written.append(plots.plot_calibration(calibration_data(outcome["confidence"], outcome["outcome"]),
                                                  root / "calibration.png", label))
        if kind == "image" and problem == "single_label_classification":
            grid = _top_losses_grid(root / "top_losses.png", predictions, outcome, images)
            if grid is not None:
                written.append(grid)
    if kind != "image":
        table = root / "top_losses.md"
        table.write_text("# Top losses (validation)\n\n" + top_losses_table(predictions), encoding="utf-8")
        written.append(table)
    return written


def _top_losses_grid(path: Path, predictions, outcome, images: Sequence | None) -> Path | None:
    from ftlib.outputs import report_plots as plots

    names = [str(n) for n in predictions["label_names"]]
    shown, captions = [], []
    for i in top_losses(outcome["loss"]):
        image = _open_image(images[i] if images is not None else str(predictions["examples"][i]))
        if image is None:
            continue
        shown.append(image)
        captions.append(f"{names[int(predictions['labels'][i])]} → {names[int(outcome['pred'][i])]} "
                        f"({outcome['prob'][i]:.2f})")
    if not shown:
        logger.info("report: no validation image to show in the top losses (paths not found)")
        return None
    return plots.plot_image_grid(shown, captions, path)


def report_from_trainer(trainer, examples: EvalExamples | None, label_names: Sequence[str] | None,
                        metric: str | None) -> list[Path]:
    """The end-of-run report (main process): the trainer's ``log_history``, its last validation predictions
    (``FtTrainer.last_eval_output``) saved to ``report/predictions.npz``. A failure is logged, never raised:
    the model is trained and saved by now."""
    try:
        output_dir = Path(trainer.args.output_dir)
        predictions, images = None, None
        output = getattr(trainer, "last_eval_output", None)
        if examples is not None and output is not None and output.predictions is not None and label_names:
            problem = getattr(trainer.model.config, "problem_type", None) or "single_label_classification"
            predictions = collect_predictions(output, examples, label_names, problem)
            (output_dir / REPORT_DIR).mkdir(parents=True, exist_ok=True)
            save_predictions(output_dir / REPORT_DIR / PREDICTIONS, predictions)
            if examples.kind == "image":
                images = _LazyColumn(examples.rows, examples.columns[0])
        schedule = unfreeze_schedule({"stateful_callbacks": getattr(trainer.state, "stateful_callbacks", None)})
        return write_report(output_dir, trainer.state.log_history, metric=metric, predictions=predictions,
                            schedule=schedule, images=images)
    except Exception as err:  # noqa: BLE001 - the report never costs a finished run
        logger.warning("report: not written (%s: %s)", type(err).__name__, err)
        return []


class _LazyColumn:
    """``rows[i][column]`` on demand: only the top losses' images are read."""

    def __init__(self, rows, column: str):
        self.rows, self.column = rows, column

    def __getitem__(self, i: int):
        return self.rows[int(i)][self.column]

    def __len__(self) -> int:
        return len(self.rows)


# -- ftlib-report ------------------------------------------------------------------------------------------------
# The recipes' default headline metrics (``set_best_metric``), in an order no task's evaluation keys confuse: token
# runs log "f1" and "accuracy", multi-label "micro_f1", single-label "accuracy" and "macro_f1", regression "mse".
DEFAULT_HEADLINES = ("f1", "micro_f1", "accuracy", "mse")


def _headline_metric(root: Path, log_history: list[dict]) -> str | None:
    """The run's ``metric_for_best_model``: recorded by a finished run (``ftlib_strategy.json``), given in its
    ``config.yaml``, or else (a checkpoint of a run that left it to the recipe) the recipe's default among the
    evaluation's keys."""
    for candidate in (root / "ftlib_strategy.json",):
        if candidate.is_file():
            metric = json.loads(candidate.read_text()).get("metric_for_best_model")
            if metric:
                return metric
    for config in (root / "config.yaml", root.parent / "config.yaml"):
        if config.is_file():
            import yaml

            metric = (yaml.safe_load(config.read_text()) or {}).get("metric_for_best_model")
            if metric:
                return metric
    logged = {key for row in log_history for key in row}
    return next((name for name in DEFAULT_HEADLINES if f"eval_{name}" in logged), None)


def regenerate(directory: str | Path) -> list[Path]:
    """Rewrite ``report/`` of a finished output or a checkpoint folder from its ``trainer_state.json`` (and
    ``report/predictions.npz`` when it has one: a checkpoint has curves only). Never loads the model."""
    root = Path(directory)
    state_file = root / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(
            f"{state_file} does not exist: ftlib-report reads a finished output directory or a checkpoint-* folder "
            "of one (both hold trainer_state.json)"
        )
    state = json.loads(state_file.read_text())
    saved = root / REPORT_DIR / PREDICTIONS
    predictions = load_predictions(saved) if saved.is_file() else None
    if predictions is None:
        logger.info("%s: no %s, so the report has the curves only (confusion, calibration and top losses come "
                    "from the validation predictions a finished run saves)", root, saved.relative_to(root))
    logs = state.get("log_history", [])
    return write_report(root, logs, metric=_headline_metric(root, logs), predictions=predictions,
                        schedule=unfreeze_schedule(state))


def main(argv: list[str] | None = None) -> int:
    """``ftlib-report DIR``: regenerate the report of a finished output or a checkpoint folder."""
    parser = argparse.ArgumentParser(prog="ftlib-report", description=regenerate.__doc__)
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    try:
        written = regenerate(args.directory)
    except (FileNotFoundError, ValueError) as err:
        print(f"ftlib-report: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0

