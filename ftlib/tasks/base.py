"""What the shared code asks of a task: one :class:`Task` per task module, found by name in :data:`TASKS`
(:mod:`ftlib.tasks.registry`).

Running, predicting, reporting and pushing call these fields and never ask which task they serve: the recipe's
defaults, the model class, the data settings ``ftlib-predict`` takes from a run, how it reads input and writes
predictions, the model card's pipeline tag. Adding a task is one module in ``ftlib/tasks``, one recipe and their
tests (docs/contributing.md).

Importing a task module stays light (no torch, no transformers): its argument dataclass is parsed with every
recipe's command line, and ``ftlib-predict`` lists every task's flags. Heavy imports live inside its functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlib.strategy.arguments import FineTuneArguments

# TrainingArguments defaults every recipe shares (each task adds its own; a config or the command line overrides them).
TRAINING_DEFAULTS = {
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "logging_steps": 10,
    "report_to": "none",
}

# The text encoders' default strategy (the text and token tasks), measured on SST-2 (bench/text_cls_sst2.py) and
# chosen again on data it was not tuned on (bench/text_suite.py, bench/token_suite.py; docs/small_data.md): frozen
# embeddings (half of a small encoder's weights: no gradient, no optimizer step), a fast fresh head, blocks that
# learn less the lower they sit, and at least 250 optimizer steps (100 rows at batch 16 for 3 epochs are 21 steps,
# after which a model predicts the majority class, or tags every word O).
ENCODER_STRATEGY = {
    "freeze_embeddings": True,
    "learning_rate": 1e-4,
    "head_learning_rate": 1e-3,
    "layer_decay": 0.9,
    "warmup_steps": 0.1,
    "min_train_steps": 250,
}


class PredictError(ValueError):
    """Bad input to ftlib-predict: the message names the file, folder, column or flag at fault."""


@dataclass(frozen=True)
class Task:
    """A task as the shared code sees it. ``read_input(path, settings, options) -> (rows, ids)`` reads and
    checks the input before any model loads (``options["given"]``: the settings given as flags, not by the run); ``predict(model, folder, rows, ids, settings, output, options)`` writes
    one prediction per row (``options``: batch_size, num_workers, device, progress, threshold);
    ``check_predict(folder, options)`` refuses options that do not apply, before the model loads."""

    name: str  # the key a run records and ``ftlib-predict --task`` takes: "text", "image", "token", "causal_lm"
    title: str  # "text classification", for messages
    pipeline_tag: str  # the model card's task and transformers.pipeline's
    data_arguments: type  # the task's data dataclass (parsed with ModelArguments, FineTuneArguments, TrainingArguments)
    auto_model: str  # the transformers Auto class its models load with
    head_suffix: str  # a model whose architectures end with it holds this task's head
    predict_settings: tuple[str, ...]  # data settings ftlib-predict takes from the run's config.yaml (a flag overrides)
    output_suffixes: tuple[str, ...]  # what ftlib-predict writes
    defaults: Mapping[str, Any]  # the recipe's defaults that differ from FineTuneArguments' / TrainingArguments'
    read_input: Callable[..., tuple[Any, list]]
    predict: Callable[..., None]
    check_predict: Callable[..., None] = field(default=lambda folder, options: None)
    one_output_is_regression: bool = True  # a head of one output predicts a value (not for tags: a single tag)

    def wrote(self, settings: Mapping[str, Any]) -> bool:
        """Whether a run's recorded settings (its config.yaml) hold every field of this task's data arguments."""
        return {f.name for f in dataclasses.fields(self.data_arguments)} <= set(settings)

    def strategy(self, **overrides: Any) -> tuple[FineTuneArguments, dict[str, Any]]:
        """The recipe's default strategy for a notebook or script: ``(FineTuneArguments, TrainingArguments
        keyword arguments)``, ``overrides`` applied, exactly what the recipe trains with when given no flags.

            ft_args, training_kwargs = TEXT.strategy(learning_rate=3e-5)
            training_args = TrainingArguments(output_dir="out", **training_kwargs)
        """
        values = {**self.defaults, **overrides}
        ft_names = {f.name for f in dataclasses.fields(FineTuneArguments)}
        ft_args = FineTuneArguments(**{k: v for k, v in values.items() if k in ft_names})
        return ft_args, {k: v for k, v in values.items() if k not in ft_names}


# -- shared by the tasks' predict functions -------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_file(path: Path):
    """A temporary file beside ``path``, renamed to it once complete: a run cut short leaves no half-written file."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def plain(value: Any) -> Any:
    """A numpy scalar as a Python one (for json and csv)."""
    return value.item() if hasattr(value, "item") else value


def inference_batches(loader, device: str, progress: bool) -> Iterator[dict]:
    """The loader's batches on ``device``, under ``torch.inference_mode``, with a progress bar."""
    import torch
    from tqdm.auto import tqdm

    with torch.inference_mode():
        for batch in tqdm(loader, desc="predicting", unit="batch", disable=not progress):
            yield {key: value.to(device) for key, value in batch.items()}
