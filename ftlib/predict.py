"""Apply a fine-tuned ftlib output directory to new data.

    ftlib-predict --model OUT --input FILE_OR_FOLDER --output preds.csv

The input is read as training reads it (:mod:`ftlib.data`): for text a csv / tsv / json / jsonl / parquet file
with the run's text column (and pair column); for images a folder (every image under it, sorted by path) or a
csv / jsonl / parquet file of image paths (relative to the file); for tokens a CoNLL file (a word a line, any
tag columns after it are kept as gold) or JSON lines of word lists. The run's ``config.yaml`` in OUT gives the
task, the column names and the preprocessing (maximum length, truncation, stride, image geometry); flags
override them. OUT may hold a full model, a merged LoRA model or a LoRA adapter (its base checkpoint from the
adapter's config or the run's, or ``--base_model PATH``).

Writes one prediction per input row, in input order (no row is dropped: an empty text is predicted as such):
``.csv`` or ``.jsonl`` with ``id``, ``label``, ``score`` and ``prob_<label>`` for each class (multi-label: every
label over its threshold, ``;``-joined, with the thresholds tuned at the end of training, ``thresholds.json``;
regression: ``value``); for tokens the predicted tag of every word (read at its first sub-token) as CoNLL
(``word<TAB>predicted``, or ``word<TAB>gold<TAB>predicted`` when the input has tags, like the recipe's
``test_predictions.conll``) or JSON lines. Bad input (a missing column, an image that does not decode, a folder
that is not a model) stops with an error naming it before the model loads; only the run's id column may be missing
(new data rarely carries the training set's ids): the rows are then numbered (images named by their paths), with a
warning.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

logger = logging.getLogger("ftlib.predict")

TASKS = ("text", "image", "token")
HEADS = {"text": "ForSequenceClassification", "image": "ForImageClassification", "token": "ForTokenClassification"}
OUTPUT_SUFFIXES = {"text": (".csv", ".jsonl"), "image": (".csv", ".jsonl"), "token": (".conll", ".txt", ".jsonl")}
# The data settings each task reads from config.yaml, which a flag of the same name overrides.
SETTINGS = {
    "text": ("text_column", "text_pair_column", "id_column", "max_seq_length", "truncation", "head_fraction"),
    "image": ("image_column", "id_column", "check_images"),
    "token": ("tokens_column", "tags_column", "tag_names", "max_seq_length", "stride"),
}
RUN_CONFIG = "config.yaml"  # ftlib.run.CONFIG_FILE (not imported: it pulls in the whole training stack)
MULTI, REGRESSION = "multi_label_classification", "regression"


class PredictError(ValueError):
    """Bad input to ftlib-predict: the message names the file, folder, column or flag at fault."""


# -- the model folder ---------------------------------------------------------------------------------------------

@dataclass
class ModelFolder:
    """What ``--model`` holds: the task, the fine-tuned model's config (labels, problem type, head), the run's
    settings (``config.yaml``; empty for a plain model given ``--task``), and for a LoRA adapter its base."""

    path: Path
    task: str
    config: Any
    settings: dict
    base: str | None = None  # a LoRA adapter's base checkpoint, resolved; None: the folder holds the whole model

    @property
    def labels(self) -> list[str]:
        return [str(self.config.id2label[i]) for i in range(self.config.num_labels)]

    @property
    def problem_type(self) -> str:
        problem = getattr(self.config, "problem_type", None)
        if problem:
            return problem
        return REGRESSION if self.config.num_labels == 1 and self.task != "token" else "single_label_classification"


def inspect_model(path: str | Path, task: str | None = None, base_model: str | None = None,
                  trust_remote_code: bool = False) -> ModelFolder:
    """Check ``path`` before anything loads: a model folder (full, merged, or a LoRA adapter), an ftlib output
    (its ``config.yaml``; a plain transformers model needs ``task``), a classification head for the task, and for
    an adapter an available base checkpoint. Every failure is a :class:`PredictError` naming the fix."""
    from transformers import AutoConfig

    from ftlib.integrity import MANIFEST
    from ftlib.lora import TASK_CONFIG, load_task_config

    path = Path(path)
    if not path.is_dir():
        raise PredictError(f"--model {path}: {'a file, not a folder' if path.exists() else 'no such folder'}")
    adapter = (path / "adapter_config.json").is_file()
    if not adapter and not (path / "config.json").is_file():
        checkpoints = sorted(path.glob("checkpoint-*"), key=lambda p: p.name)
        hint = (f"; it holds {', '.join(p.name for p in checkpoints)} (a run that has not finished: give a "
                "checkpoint folder, or let the run finish)") if checkpoints else ""
        raise PredictError(f"--model {path} is not a model folder: no config.json or adapter_config.json{hint}")
    settings: dict = {}
    if (path / RUN_CONFIG).is_file():
        try:
            settings = yaml.safe_load((path / RUN_CONFIG).read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise PredictError(f"--model {path}: its {RUN_CONFIG} is unreadable: {err}") from None
    elif task is None:
        raise PredictError(f"--model {path} is not an ftlib output: no {RUN_CONFIG} (the run's data settings). To "
                           "predict with a plain transformers model, pass --task text|image|token (the settings are "
                           "then ftlib's defaults, or flags)")
    if settings and not (path / MANIFEST).is_file():
        logger.warning("%s has no %s: an unfinished output or a checkpoint; predicting with its files as they are",
                       path, MANIFEST)
    if base_model and not adapter:
        raise PredictError(f"--base_model: {path} holds a whole model, not a LoRA adapter; leave --base_model out")
    if adapter:
        if not (path / TASK_CONFIG).is_file():
            raise PredictError(
                f"--model {path} is a LoRA adapter without {TASK_CONFIG} (the labels and head, which ftlib saves "
                "beside every adapter; an adapter saved by an older ftlib lacks it): train it again, or with "
                "--lora_save merged"
            )
        config = load_task_config(path)
    else:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    task = _check_task(path, task, settings, config)
    base = resolve_base(path, settings, base_model, config.model_type) if adapter else None
    return ModelFolder(path, task, config, settings, base)


def _check_task(path: Path, task: str | None, settings: dict, config) -> str:
    """The task: ``--task``, else the run's (its data settings say which recipe wrote it), checked against the
    model's head."""
    from_run = next((t for t, key in (("token", "tokens_column"), ("image", "image_column"), ("text", "text_column"))
                     if key in settings), None)
    architectures = list(getattr(config, "architectures", None) or [])
    from_head = next((t for t, head in HEADS.items() if any(a.endswith(head) for a in architectures)), None)
    named = ", ".join(architectures) or f"a {config.model_type} model without a task head"
    if from_head is None:
        raise PredictError(f"--model {path} is not a text, image or token classifier ({named})")
    chosen = task or from_run or from_head
    if chosen != from_head:
        raise PredictError(f"--model {path} holds a {from_head} classifier ({named}), not a {chosen} one"
                           + (" (--task)" if task else ""))
    return chosen


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (``name`` or ``org/name``)."""
    return name.startswith((".", "/", "~", "\\")) or Path(name).is_absolute() or name.count("/") > 1


def resolve_base(path: Path, settings: dict, base_model: str | None, model_type: str) -> str:
    """Where a LoRA adapter's base checkpoint loads from: ``--base_model``, else the one its adapter config records,
    else the run's ``model_name_or_path`` (offline short names resolved): a local folder, or a Hub name found
    (offline: in the local cache). None available is an error naming the base and ``--base_model``."""
    from transformers import AutoConfig

    from ftlib.checkpoints import resolve_checkpoint

    recorded = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    candidates = [base_model] if base_model else [c for c in (recorded, settings.get("model_name_or_path")) if c]
    reasons = []
    for name in dict.fromkeys(candidates):
        try:
            resolved = resolve_checkpoint(name)
        except ValueError as err:
            reasons.append(str(err))
            continue
        local = Path(resolved).expanduser()
        if local.is_dir():
            found = str(local)
        elif _looks_local(str(resolved)):
            reasons.append(f"{name}: no such folder")
            continue
        else:
            found = str(resolved)
        try:
            base_type = AutoConfig.from_pretrained(found, revision=settings.get("revision") or None).model_type
        except (OSError, ValueError) as err:
            reasons.append(f"{name}: {str(err).splitlines()[0]}")
            continue
        if base_type != model_type:
            raise PredictError(f"{'--base_model ' if base_model else ''}{name} is a {base_type} model; the adapter in "
                               f"{path} was trained on a {model_type} one ({recorded})")
        return found
    if base_model:
        raise PredictError(f"--base_model {base_model} is not available ({'; '.join(reasons)})")
    if not candidates:
        raise PredictError(f"--model {path} is a LoRA adapter that names no base model; pass --base_model PATH")
    raise PredictError(
        f"--model {path} is a LoRA adapter whose base model {candidates[0]!r} is not available here "
        f"({'; '.join(reasons)}); pass --base_model PATH, a local copy of that checkpoint"
    )


def load_model(folder: ModelFolder, device: str = "cpu", trust_remote_code: bool = False):
    """The model in eval mode on ``device``: loaded whole, or the base checkpoint with the adapter merged in."""
    from transformers import (
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
    )
    from transformers.utils import logging as hf_logging

    auto = {"text": AutoModelForSequenceClassification, "image": AutoModelForImageClassification,
            "token": AutoModelForTokenClassification}[folder.task]
    if folder.base is None:
        model = auto.from_pretrained(folder.path, trust_remote_code=trust_remote_code)
    else:
        from peft import PeftModel

        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "head newly initialised": the adapter brings the trained head
        try:
            base = auto.from_pretrained(folder.base, config=folder.config, trust_remote_code=trust_remote_code)
        finally:
            hf_logging.set_verbosity(before)
        try:
            model = PeftModel.from_pretrained(base, folder.path).merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as err:
            raise PredictError(f"the LoRA adapter in {folder.path} does not fit the base model {folder.base}: "
                               f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval()


# -- settings and input --------------------------------------------------------------------------------------------

def data_settings(folder: ModelFolder, overrides: dict[str, Any]) -> dict[str, Any]:
    """The task's data settings: a flag (``overrides``; an empty string unsets a column), else the run's
    ``config.yaml``, else the argument dataclass's default. A flag the task does not use is an error."""
    from ftlib.args import ImageDataArguments, TextDataArguments, TokenDataArguments

    given = {k: v for k, v in overrides.items() if v is not None}
    foreign = sorted(k for k in given if k not in SETTINGS[folder.task])
    if foreign:
        raise PredictError(f"{', '.join('--' + k for k in foreign)}: not used for {folder.task} classification "
                           f"(its settings: {', '.join('--' + k for k in SETTINGS[folder.task])})")
    arguments = {"text": TextDataArguments, "image": ImageDataArguments, "token": TokenDataArguments}[folder.task]
    defaults = {f.name: f.default for f in dataclasses.fields(arguments) if f.default is not dataclasses.MISSING}
    keys = set(defaults) | {"per_device_eval_batch_size"}
    settings = {k: v for k, v in {**defaults, **folder.settings}.items() if k in keys}
    settings.update({k: (None if v == "" else v) for k, v in given.items()})
    settings.setdefault("per_device_eval_batch_size", 8)  # TrainingArguments' default
    return settings


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


def read_input(task: str, path: str | Path, settings: dict[str, Any], num_threads: int | None = None,
               id_column_given: bool = True):
    """The rows to predict, read by ftlib.data as training reads them, checked (columns, images) before any model
    loads; returns ``(dataset, ids)``, one id per row in input order. ``id_column_given`` False: the id column is the
    run's, and rows are numbered (images: named by their paths) when the input lacks it."""
    from ftlib.data.files import empty_rows, load_files, require_columns

    path = Path(path)
    if not path.exists():
        raise PredictError(f"--input {path}: no such file or folder")
    source = str(path)
    if task == "token":
        from ftlib.data.token import read_token_file

        if path.is_dir():
            raise PredictError(f"--input {path} is a folder; words are read from a CoNLL (.conll, .txt, .iob, .bio) "
                               "or JSON lines file")
        data = read_token_file(path, settings["tokens_column"], settings["tags_column"], settings["tag_names"],
                               require_tags=False)
        return data, list(data["id"])
    if task == "image" and path.is_dir():
        from ftlib.data.image import list_image_folder

        data = list_image_folder(path, settings["image_column"])
    elif path.is_dir():
        raise PredictError(f"--input {path} is a folder; text is read from a csv, tsv, json, jsonl or parquet file")
    else:
        data = load_files({"predict": str(path)})["predict"]
    if task == "text":
        id_column = usable_id_column(data, settings, source, id_column_given, "their row numbers (0, 1, ...)")
        columns = [settings["text_column"], settings["text_pair_column"], id_column]
        require_columns(data, columns, source)
        empty = empty_rows(data, columns[:2])
        if len(empty) == len(data):
            raise PredictError(f"{source}: every row has an empty text ('{settings['text_column']}'); is that the "
                               "right column? (--text_column)")
        if empty:
            first = ", ".join(str(r + 1) for r in empty[:10]) + (", ..." if len(empty) > 10 else "")
            logger.warning("%s: %d of %d rows have an empty text (data rows %s); predicted as empty input",
                           source, len(empty), len(data), first)
        ids = data[id_column] if id_column else list(range(len(data)))
        return data, list(ids)
    from ftlib.data.image import image_ids, image_references, scan_images

    column = settings["image_column"]
    # a folder's images are named by their paths
    id_column = None if path.is_dir() else usable_id_column(data, settings, source, id_column_given, "their image paths")
    require_columns(data, [column, id_column], source)
    data = image_references(data, column, None if path.is_dir() else path)
    missing = empty_rows(data, [column])
    if missing:
        raise PredictError(f"{source}: data row {missing[0] + 1} has no image in column '{column}'"
                           + (f" ({len(missing)} rows in all)" if len(missing) > 1 else ""))
    if settings["check_images"]:
        scan_images(data, column, num_threads=num_threads)  # CorruptImageError names the file
    ids = data[id_column] if id_column else image_ids(data, column)
    return data, list(ids)


# -- prediction ----------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _inference():
    import torch

    with torch.inference_mode():
        yield


def _batches(loader, device: str, progress: bool) -> Iterator[dict]:
    from tqdm.auto import tqdm

    for batch in tqdm(loader, desc="predicting", unit="batch", disable=not progress):
        yield {key: value.to(device) for key, value in batch.items()}


def predict_logits(model, folder: ModelFolder, data, settings: dict, *, batch_size: int, num_workers: int,
                   device: str, progress: bool) -> np.ndarray:
    """Text or image logits, one row per input row in input order: text tokenised as in training and padded per
    batch to its longest row; images decoded and transformed in ``num_workers`` DataLoader workers."""
    from torch.utils.data import DataLoader

    if folder.task == "text":
        from transformers import AutoTokenizer, DataCollatorWithPadding

        from ftlib.data.text import effective_max_length, tokenize_text

        tokenizer = AutoTokenizer.from_pretrained(folder.path)
        max_length = effective_max_length(tokenizer, model.config, settings["max_seq_length"])
        encoded = tokenize_text(data, tokenizer, settings["text_column"], settings["text_pair_column"], max_length,
                                settings["truncation"], settings["head_fraction"], keep=()).remove_columns("length")
        loader = DataLoader(encoded, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    else:
        from transformers import AutoImageProcessor

        from ftlib.data.image import ImageTransform, build_transforms, image_collate

        processor = AutoImageProcessor.from_pretrained(folder.path)
        knobs = settings.get("augmentation_knobs") or {}
        knobs = json.loads(knobs) if isinstance(knobs, str) else dict(knobs)
        transform = build_transforms(processor, settings.get("augmentation", "none"), train=False, **knobs)
        column = settings["image_column"]
        images = data.select_columns([column]).with_transform(ImageTransform(transform, column))
        loader = DataLoader(images, batch_size=batch_size, num_workers=num_workers, collate_fn=image_collate)
    out = []
    with _inference():
        for batch in _batches(loader, device, progress):
            out.append(model(**batch).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels), dtype=np.float32)


def predict_tags(model, folder: ModelFolder, data, settings: dict, *, batch_size: int, device: str,
                 progress: bool) -> list[list[str]]:
    """The predicted tag of every word of every sentence: windows as in training (``--max_seq_length``,
    ``--stride``), each word read at its first sub-token in the window where it has the most context."""
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from ftlib.data.text import effective_max_length
    from ftlib.data.token import tokenize_dataset, words_predictions

    tokenizer = AutoTokenizer.from_pretrained(folder.path)
    if not getattr(tokenizer, "is_fast", False):
        raise PredictError(f"--model {folder.path}: token classification needs a fast tokenizer (word ids)")
    max_length = effective_max_length(tokenizer, model.config, settings["max_seq_length"])
    # the tokenizer's alignment marks each word's first sub-token with a label; the gold tags (if any) are not needed
    marker = folder.labels[0]
    words = Dataset.from_dict({"tokens": list(data["tokens"]),
                               "tags": [[marker] * len(tokens) for tokens in data["tokens"]]})
    windows = tokenize_dataset(words, tokenizer, {marker: 0}, max_length, stride=settings["stride"])
    inputs = windows.select_columns([c for c in tokenizer.model_input_names if c in windows.column_names])
    loader = DataLoader(inputs, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer))
    width = max((len(ids) for ids in windows["input_ids"]), default=0)
    pred_ids = np.zeros((len(windows), width), dtype=np.int64)
    row = 0
    with _inference():
        for batch in _batches(loader, device, progress):
            ids = model(**batch).logits.argmax(-1).cpu().numpy()
            pred_ids[row:row + len(ids), : ids.shape[1]] = ids
            row += len(ids)
    return words_predictions(pred_ids, windows, len(data), dict(enumerate(folder.labels)))


# -- output --------------------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


@contextlib.contextmanager
def _atomic(path: Path):
    """A temporary file beside ``path``, renamed to it once complete: a run cut short leaves no half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_class_predictions(path: Path, ids: Sequence, logits: np.ndarray, folder: ModelFolder,
                            thresholds=0.5) -> None:
    """One row per input row: ``id, label, score, prob_<label>...`` (csv) or objects (jsonl); see the module
    docstring. Multi-label: every label whose probability reaches its threshold."""
    from ftlib.metrics import decode_logits

    names, problem = folder.labels, folder.problem_type
    preds, probs = decode_logits(logits, problem, thresholds)
    if problem == REGRESSION:
        rows = [{"id": _plain(i), "value": float(v)} for i, v in zip(ids, preds)]
    else:
        if problem != MULTI:
            probs = _softmax(logits)  # every class's probability, not only the predicted one's
        rows = []
        for row_id, pred, p in zip(ids, preds, probs):
            if problem == MULTI:
                chosen = [j for j, on in enumerate(pred) if on]
                label, score = [names[j] for j in chosen], [float(p[j]) for j in chosen]
            else:
                label, score = names[int(pred)], float(p[int(pred)])
            rows.append({"id": _plain(row_id), "label": label, "score": score,
                         "probs": {name: float(v) for name, v in zip(names, p)}})
    with _atomic(path) as partial, partial.open("w", newline="", encoding="utf-8") as handle:
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    from scipy.special import softmax

    return softmax(np.asarray(logits, dtype=np.float64), axis=-1)


def write_tag_predictions(path: Path, data, tags: list[list[str]]) -> None:
    """CoNLL (``word<TAB>[gold<TAB>]predicted``, a blank line between sentences) or JSON lines (``id``, ``tokens``,
    ``predicted``, and the input's ``tags`` when it has them)."""
    from ftlib.data.token import write_conll_predictions

    with _atomic(path) as partial:
        if path.suffix != ".jsonl":
            write_conll_predictions(partial, data, tags)
            return
        golds = data["tags"] if "tags" in data.column_names else [None] * len(data)
        with partial.open("w", encoding="utf-8") as handle:
            for sentence_id, tokens, gold, predicted in zip(data["id"], data["tokens"], golds, tags):
                row = {"id": sentence_id, "tokens": tokens, "predicted": predicted}
                if gold is not None:
                    row["tags"] = gold
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


# -- the command ---------------------------------------------------------------------------------------------------

def predict(model: str | Path, input: str | Path, output: str | Path, *, task: str | None = None,
            base_model: str | None = None, batch_size: int | None = None, num_workers: int | None = None,
            threshold: float | None = None, device: str | None = None, trust_remote_code: bool = False,
            progress: bool = True, **overrides: Any) -> Path:
    """Predict every row of ``input`` with the model in ``model`` and write ``output`` (see the module docstring);
    ``overrides``: data settings that replace the run's (``text_column=...``). Returns the output path."""
    output = Path(output)
    folder = inspect_model(model, task, base_model, trust_remote_code)
    settings = data_settings(folder, overrides)
    if output.suffix.lower() not in OUTPUT_SUFFIXES[folder.task]:
        raise PredictError(f"--output {output}: write {folder.task} predictions as "
                           f"{' or '.join(OUTPUT_SUFFIXES[folder.task])}")
    if output.resolve().is_relative_to(folder.path.resolve()):
        raise PredictError(f"--output {output} is inside --model {folder.path}: it would change the model folder "
                           "(and break its manifest); write the predictions elsewhere")
    if threshold is not None and folder.problem_type != MULTI:
        raise PredictError(f"--threshold applies to multi-label models; {folder.path} is {folder.problem_type}")
    if batch_size is not None and batch_size < 1:
        raise PredictError(f"--batch_size must be >= 1, got {batch_size}")
    batch_size = batch_size or int(settings["per_device_eval_batch_size"])
    if num_workers is None and folder.task == "image":
        from ftlib.data.image import default_num_workers

        num_workers = default_num_workers()
    data, ids = read_input(folder.task, input, settings, num_threads=num_workers or None,
                           id_column_given=overrides.get("id_column") is not None)
    thresholds = 0.5
    if folder.problem_type == MULTI:
        from ftlib.thresholds import THRESHOLDS_FILE, read_thresholds

        saved = read_thresholds(folder.path, folder.labels)
        thresholds = threshold if threshold is not None else (saved if saved is not None else 0.5)
        if threshold is None and saved is None:
            logger.warning("%s has no %s: every label at 0.5", folder.path, THRESHOLDS_FILE)

    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(folder, device, trust_remote_code)
    output.parent.mkdir(parents=True, exist_ok=True)
    if folder.task == "token":
        tags = predict_tags(loaded, folder, data, settings, batch_size=batch_size, device=device, progress=progress)
        if len(tags) != len(data):  # never: one prediction per sentence, whatever the windows
            raise RuntimeError(f"{len(tags)} predictions for {len(data)} sentences")
        write_tag_predictions(output, data, tags)
    else:
        logits = predict_logits(loaded, folder, data, settings, batch_size=batch_size, num_workers=num_workers or 0,
                                device=device, progress=progress)
        if len(logits) != len(ids):  # never: one prediction per row, in order
            raise RuntimeError(f"{len(logits)} predictions for {len(ids)} rows")
        write_class_predictions(output, ids, logits, folder, thresholds)
    logger.info("%d predictions written to %s", len(ids), output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ftlib-predict", description="Apply a fine-tuned ftlib output directory to new data.",
        epilog="Text: csv / tsv / json / jsonl / parquet in, .csv or .jsonl out. Images: a folder or a file of paths "
               "in, .csv or .jsonl out. Tokens: CoNLL or JSON lines in, .conll or .jsonl out.",
    )
    parser.add_argument("--model", required=True, help="an ftlib output directory (full model, merged or LoRA adapter)")
    parser.add_argument("--input", required=True, help="the data to predict: a file, or for images a folder")
    parser.add_argument("--output", required=True, help="where to write the predictions (.csv / .jsonl / .conll)")
    parser.add_argument("--base_model", help="a LoRA adapter's base checkpoint, when the one it records is not here")
    parser.add_argument("--task", choices=TASKS, help="the task (default: the run's; needed for a plain model)")
    parser.add_argument("--batch_size", type=int, help="rows per batch (default: the run's evaluation batch size)")
    parser.add_argument("--num_workers", type=int, help="image decoding workers (default: the CPUs less one, up to 8)")
    parser.add_argument("--threshold", type=float, help="multi-label: one threshold for every label instead of the "
                                                        "tuned ones (thresholds.json)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run modelling code shipped with the model")
    parser.add_argument("--disable_tqdm", action="store_true", help="no progress bar")
    data = parser.add_argument_group("data settings (default: the run's config.yaml; an empty value unsets a column)")
    for name, kind in (("text_column", str), ("text_pair_column", str), ("id_column", str), ("image_column", str),
                       ("tokens_column", str), ("tags_column", str), ("max_seq_length", int), ("stride", int),
                       ("truncation", str), ("head_fraction", float)):
        data.add_argument(f"--{name}", type=kind)
    data.add_argument("--check_images", type=lambda v: v.lower() in ("1", "true", "yes"),
                      help="decode every image once before predicting (default: the run's, true)")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO, stream=sys.stderr)
    options = {key: args.pop(key) for key in ("model", "input", "output")}
    args["progress"] = not args.pop("disable_tqdm")
    try:
        predict(**options, **args)
    except (PredictError, ValueError, FileNotFoundError) as err:
        print(f"ftlib-predict: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
