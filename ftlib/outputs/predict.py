"""Apply a fine-tuned ftlib output directory to new data.

    ftlib-predict --model OUT --input FILE_OR_FOLDER --output preds.csv

The input is read as training reads it (:mod:`ftlib.data`): for text a csv / tsv / json / jsonl / parquet file
with the run's text column (and pair column); for images a folder (every image under it, sorted by path) or a
csv / jsonl / parquet file of image paths (relative to the file); for tokens a CoNLL file (a word a line, any
tag columns after it are kept as gold) or JSON lines of word lists; for causal LMs a jsonl / csv file of ``messages``,
``prompt`` or ``instruction`` rows, rendered as the run rendered its prompts. The run's ``config.yaml`` in OUT gives the
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
from types import SimpleNamespace
from typing import Any

import yaml

from ftlib.outputs.integrity import MANIFEST
from ftlib.strategy.lora import TASK_CONFIG, load_task_config
from ftlib.tasks.base import PredictError, Task
from ftlib.tasks.registry import TASKS
from ftlib.training.checkpoints import resolve_checkpoint

logger = logging.getLogger("ftlib.outputs.predict")

RUN_CONFIG = "config.yaml"  # ftlib.run.output_dir.CONFIG_FILE (a layer above: outputs do not import the run)
REGRESSION = "regression"


# -- the model folder ---------------------------------------------------------------------------------------------

@dataclass
class ModelFolder:
    """What ``--model`` holds: the task, the fine-tuned model's config (labels, problem type, head), the run's
    settings (``config.yaml``; empty for a plain model given ``--task``), and for a LoRA adapter its base."""

    path: Path
    task: Task
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
        return REGRESSION if self.config.num_labels == 1 and self.task.one_output_is_regression else "single_label_classification"


def inspect_model(path: str | Path, task: str | None = None, base_model: str | None = None,
                  trust_remote_code: bool = False) -> ModelFolder:
    """Check ``path`` before anything loads: a model folder (full, merged, or a LoRA adapter), an ftlib output
    (its ``config.yaml``; a plain transformers model needs ``task``), a classification head for the task, and for
    an adapter an available base checkpoint. Every failure is a :class:`PredictError` naming the fix."""
    from transformers import AutoConfig

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
                           "predict with a plain transformers model, pass --task (the settings are "
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
    backbone = getattr(config, "backbone_config", None)
    base = resolve_base(path, settings, base_model, config.model_type,
                        getattr(backbone, "model_type", None)) if adapter else None
    return ModelFolder(path, task, config, settings, base)


def _check_task(path: Path, task: str | None, settings: dict, config) -> Task:
    """The task: ``--task``, else the run's (its data settings say which recipe wrote it), checked against the
    model's head."""
    # the run's task: the one whose data arguments it recorded, the most specific where several fit
    wrote = [t for t in TASKS.values() if t.wrote(settings)]
    from_run = max(wrote, key=lambda t: len(dataclasses.fields(t.data_arguments))).name if wrote else None
    architectures = list(getattr(config, "architectures", None) or [])
    from_head = next((name for name, t in TASKS.items() if any(a.endswith(t.head_suffix) for a in architectures)), None)
    named = ", ".join(architectures) or f"a {config.model_type} model without a task head"
    if from_head is None:
        kinds = ", ".join(t.title for t in TASKS.values())
        raise PredictError(f"--model {path} has no head ftlib-predict knows ({named}; it predicts {kinds})")
    chosen = task or from_run or from_head
    if chosen != from_head:
        raise PredictError(f"--model {path} holds a {TASKS[from_head].title} model ({named}), not a "
                           f"{TASKS[chosen].title} one" + (" (--task)" if task else ""))
    return TASKS[chosen]


def _looks_local(name: str) -> bool:
    """A path rather than a Hub id (``name`` or ``org/name``)."""
    return name.startswith((".", "/", "~", "\\")) or Path(name).is_absolute() or name.count("/") > 1


def resolve_base(path: Path, settings: dict, base_model: str | None, model_type: str,
                 backbone_type: str | None = None) -> str:
    """Where a LoRA adapter's base checkpoint loads from: ``--base_model``, else the one its adapter config records,
    else the run's ``model_name_or_path`` (offline short names resolved): a local folder, or a Hub name found
    (offline: in the local cache). None available is an error naming the base and ``--base_model``. The base is of
    the adapter's model type, or (``backbone_type``: a model built on a backbone, ``--backbone``) the backbone's."""
    from transformers import AutoConfig

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
        if base_type != model_type and base_type != backbone_type:
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
    import transformers
    from transformers.utils import logging as hf_logging

    auto = getattr(transformers, folder.task.auto_model)
    if folder.base is None:
        model = auto.from_pretrained(folder.path, trust_remote_code=trust_remote_code)
    else:
        from peft import PeftModel

        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "head newly initialised": the adapter brings the trained head
        try:
            base = load_base(auto, folder, trust_remote_code)
        finally:
            hf_logging.set_verbosity(before)
        try:
            model = PeftModel.from_pretrained(base, folder.path).merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as err:
            raise PredictError(f"the LoRA adapter in {folder.path} does not fit the base model {folder.base}: "
                               f"{str(err).splitlines()[0]}") from None
    return model.to(device).eval()


def load_base(auto, folder: ModelFolder, trust_remote_code: bool = False):
    """A LoRA adapter's base model: the base checkpoint with the adapter's task config, or, where the base is a plain
    backbone (a run with ``--backbone``: the adapter sits on a model built fresh around it), that model built again
    from the adapter's config with the backbone's pretrained weights loaded into it; the adapter brings the rest."""
    from transformers import AutoConfig

    from ftlib.training.backbone import is_backbone_only, load_backbone_weights

    config = AutoConfig.from_pretrained(folder.base, trust_remote_code=trust_remote_code)
    if not (is_backbone_only(config) and getattr(folder.config, "backbone_config", None) is not None):
        return auto.from_pretrained(folder.base, config=folder.config, trust_remote_code=trust_remote_code)
    model = auto.from_config(folder.config, trust_remote_code=trust_remote_code)
    source = SimpleNamespace(model_name_or_path=folder.base, revision=folder.settings.get("revision") or None,
                             cache_dir=None, trust_remote_code=trust_remote_code)
    load_backbone_weights(model, folder.base, source)
    return model


# -- settings and input --------------------------------------------------------------------------------------------

def data_settings(folder: ModelFolder, overrides: dict[str, Any]) -> dict[str, Any]:
    """The task's data settings: a flag (``overrides``; an empty string unsets a column), else the run's
    ``config.yaml``, else the argument dataclass's default. A flag the task does not use is an error."""
    given = {k: v for k, v in overrides.items() if v is not None}
    task = folder.task
    foreign = sorted(k for k in given if k not in task.predict_settings)
    if foreign:
        raise PredictError(f"{', '.join('--' + k for k in foreign)}: not used for {task.title} "
                           f"(its settings: {', '.join('--' + k for k in task.predict_settings)})")
    arguments = task.data_arguments
    defaults = {f.name: f.default for f in dataclasses.fields(arguments) if f.default is not dataclasses.MISSING}
    keys = set(defaults) | {"per_device_eval_batch_size"}
    settings = {k: v for k, v in {**defaults, **folder.settings}.items() if k in keys}
    settings.update({k: (None if v == "" else v) for k, v in given.items()})
    settings.setdefault("per_device_eval_batch_size", 8)  # TrainingArguments' default
    return settings


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
    suffixes = folder.task.output_suffixes
    if output.suffix.lower() not in suffixes:
        raise PredictError(f"--output {output}: write {folder.task.title} predictions as {' or '.join(suffixes)}")
    if output.resolve().is_relative_to(folder.path.resolve()):
        raise PredictError(f"--output {output} is inside --model {folder.path}: it would change the model folder "
                           "(and break its manifest); write the predictions elsewhere")
    if batch_size is not None and batch_size < 1:
        raise PredictError(f"--batch_size must be >= 1, got {batch_size}")
    options = {"batch_size": batch_size or int(settings["per_device_eval_batch_size"]), "num_workers": num_workers,
               "threshold": threshold, "progress": progress,
               "given": {k for k, v in overrides.items() if v is not None}}
    folder.task.check_predict(folder, options)
    path = Path(input)
    if not path.exists():
        raise PredictError(f"--input {path}: no such file or folder")
    data, ids = folder.task.read_input(path, settings, options)

    import torch

    options["device"] = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = load_model(folder, options["device"], trust_remote_code)
    output.parent.mkdir(parents=True, exist_ok=True)
    folder.task.predict(loaded, folder, data, ids, settings, output, options)
    logger.info("%d predictions written to %s", len(ids), output)
    return output


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


_BOOL_HELP = {"check_images": "decode every image once before predicting (default: the run's, true)"}


def _setting_flags() -> dict[str, Any]:
    """Every task's predict settings as flags, typed from its data dataclass (a list setting is not a flag)."""
    flags: dict[str, Any] = {}
    for task in TASKS.values():
        kinds = {f.name: str(f.type) for f in dataclasses.fields(task.data_arguments)}
        for name in task.predict_settings:
            kind = kinds[name]
            if "list" not in kind:
                flags.setdefault(name, _flag if "bool" in kind else int if "int" in kind else
                                 float if "float" in kind else str)
    return flags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ftlib-predict", description="Apply a fine-tuned ftlib output directory to new data.",
        epilog="Text: csv / tsv / json / jsonl / parquet in, .csv or .jsonl out. Images: a folder or a file of paths "
               "in, .csv or .jsonl out. Tokens: CoNLL or JSON lines in, .conll or .jsonl out. Causal LMs: jsonl / csv "
               "of messages, prompt or instruction rows in, .jsonl of generated answers out.",
    )
    parser.add_argument("--model", required=True, help="an ftlib output directory (full model, merged or LoRA adapter)")
    parser.add_argument("--input", required=True, help="the data to predict: a file, or for images a folder")
    parser.add_argument("--output", required=True, help="where to write the predictions (.csv / .jsonl / .conll)")
    parser.add_argument("--base_model", help="a LoRA adapter's base checkpoint, when the one it records is not here")
    parser.add_argument("--task", choices=sorted(TASKS), help="the task (default: the run's; needed for a plain model)")
    parser.add_argument("--batch_size", type=int, help="rows per batch (default: the run's evaluation batch size)")
    parser.add_argument("--num_workers", type=int, help="image decoding workers (default: the CPUs less one, up to 8)")
    parser.add_argument("--threshold", type=float, help="multi-label: one threshold for every label instead of the "
                                                        "tuned ones (thresholds.json)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--trust_remote_code", action="store_true", help="run modelling code shipped with the model")
    parser.add_argument("--disable_tqdm", action="store_true", help="no progress bar")
    data = parser.add_argument_group("data settings (default: the run's config.yaml; an empty value unsets a column)")
    for name, kind in _setting_flags().items():
        data.add_argument(f"--{name}", type=kind, help=_BOOL_HELP.get(name) if kind is _flag else None)
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
