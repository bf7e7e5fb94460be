"""Per-group learning rates and the unfreezing stage in every training log; a short form of each log on the console.

Trainer logs one ``learning_rate`` (the first group's). With layer-wise rates, a head rate and gradual
unfreezing, that hides the strategy; :class:`GroupLearningRateCallback` adds ``lr/<group>`` for every
optimizer parameter group and ``unfreeze/stage`` (how many stages train) to each training log, before the
trackers (``--report_to tensorboard`` ...) see it, and to ``state.log_history`` (``trainer_state.json``), which
the report (:mod:`ftlib.outputs.report`) draws.

A dozen rates in every training line and a score per class in every evaluation line bury what a person reads, so
the progress output prints a :class:`ConsoleView` of each log (:func:`use_console_view`): the loss, the gradient
norm, the head's and the base learning rate, and the headline metrics. The full logs still go to the trackers,
``trainer_state.json`` and the report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from transformers import PrinterCallback, ProgressCallback, TrainerCallback

STAGE_KEY = "unfreeze/stage"
LR_PREFIX = "lr/"


def group_key(group: dict, index: int) -> str:
    """``lr/<name>`` for an optimizer group: its ``name`` (ftlib's groups carry one) or ``group_<index>``, in
    characters every tracker accepts (letters, digits, ``_ . / -``): ``head (no decay)`` -> ``lr/head_no_decay``."""
    name = re.sub(r"[^0-9A-Za-z_./-]+", "_", str(group.get("name") or f"group_{index}")).strip("_")
    return LR_PREFIX + (name or f"group_{index}")


def group_learning_rates(optimizer) -> dict[str, float]:
    """``{lr/<group>: current learning rate}`` for every parameter group of ``optimizer``."""
    return {group_key(group, i): float(group["lr"]) for i, group in enumerate(optimizer.param_groups)}


class GroupLearningRateCallback(TrainerCallback):
    """Adds the per-group learning rates and the unfreezing stage to every training log (see the module).

    It must run before the trackers' callbacks: :meth:`install` puts it first in the Trainer's list.
    ``stage``: a function returning the number of trainable stages, or None without gradual unfreezing."""

    def __init__(self, stage=None):
        self.stage = stage
        self.rates: dict[str, float] = {}

    @classmethod
    def install(cls, trainer, stage=None) -> GroupLearningRateCallback:
        callback = cls(stage)
        trainer.callback_handler.callbacks.insert(0, callback)
        return callback

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        # the rates this step trains with (the scheduler moves them after the step, before the log), as
        # Trainer's own ``learning_rate`` is the rate of the step just taken
        if optimizer is not None:
            self.rates = group_learning_rates(optimizer)

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or not ("loss" in logs or "learning_rate" in logs):
            return  # evaluation and end-of-training summaries: no rates
        rates = self.rates or (group_learning_rates(optimizer) if optimizer is not None else {})
        extra = dict(rates)
        stage = self.stage() if self.stage is not None else None
        if stage is not None:
            extra[STAGE_KEY] = stage
        logs.update(extra)  # the trackers that run after this callback see them
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step and set(logs) - set(extra) <= set(last):
            last.update(extra)  # Trainer appended its copy of the logs before calling back


# -- the console -----------------------------------------------------------------------------------------------
PER_CLASS_SCORES = ("precision", "recall", "f1")  # text and images: precision_<class>; tokens: <TYPE>_precision
TIMING = ("runtime", "samples_per_second", "steps_per_second")


def class_names(id2label: Mapping | None) -> frozenset[str]:
    """The names that per-class metrics carry: every label, and for B-/I-/E-/S-/L-/U- tags their entity type."""
    names = {str(name) for name in (id2label or {}).values()}
    return frozenset(names | {name[2:] for name in names if re.match(r"[BIESLU]-.", name)})


@dataclass(frozen=True)
class ConsoleView:
    """What the progress output prints of a log (called with the log, returns a new dict; the log is untouched).

    - a training step (a log with ``lr/<group>`` keys): every key but the per-group rates and Trainer's
      ``learning_rate`` (the first group's: the embeddings'), which give way to ``lr/head`` (``head_key``'s rate)
      and ``lr/base`` (``base_key``'s: the top block, at ``--learning_rate``; with layer decay the blocks below
      learn less);
    - an evaluation (a log with ``<prefix>_runtime``): every key but the per-class scores (``precision_<class>``,
      ``<TYPE>_f1``, ... for the names in ``classes``) and the timings;
    - anything else (the end-of-training summary): as it is."""

    base_key: str | None = None
    head_key: str | None = LR_PREFIX + "head"
    classes: frozenset[str] = frozenset()

    def __call__(self, logs: dict) -> dict:
        if any(key.startswith(LR_PREFIX) for key in logs):
            return self._training(logs)
        prefix = next((key.removesuffix("_runtime") for key in logs
                       if key.endswith("_runtime") and key != "train_runtime"), None)
        if prefix is None:
            return dict(logs)
        hidden = {f"{prefix}_{name}" for name in TIMING}
        for name in self.classes:
            hidden |= {f"{prefix}_{score}_{name}" for score in PER_CLASS_SCORES}
            hidden |= {f"{prefix}_{name}_{score}" for score in (*PER_CLASS_SCORES, "support")}
        return {key: value for key, value in logs.items() if key not in hidden}

    def _training(self, logs: dict) -> dict:
        rates = {"lr/head": logs.get(self.head_key), "lr/base": logs.get(self.base_key)}
        rates = {key: value for key, value in rates.items() if value is not None}
        shown: dict = {}
        for key, value in logs.items():
            if key == "learning_rate" and not rates:
                shown[key] = value  # no group of the head or the top block: Trainer's rate is all there is
            elif key == "learning_rate":
                shown.update(rates)
            elif not key.startswith(LR_PREFIX):
                shown[key] = value
        return shown if "learning_rate" in logs else {**shown, **rates}


class ConsoleProgressCallback(ProgressCallback):
    """transformers' progress bar, writing the :class:`ConsoleView` of each log under it."""

    def __init__(self, view: ConsoleView, max_str_len: int = 100):
        super().__init__(max_str_len)
        self.view = view

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=None if logs is None else self.view(logs), **kwargs)


class ConsolePrinterCallback(PrinterCallback):
    """transformers' log printer (``--disable_tqdm``), printing the :class:`ConsoleView` of each log."""

    def __init__(self, view: ConsoleView):
        self.view = view

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs.pop("total_flos", None)  # as PrinterCallback does to the dict the callbacks after it see
        super().on_log(args, state, control, logs=None if logs is None else self.view(logs), **kwargs)


def use_console_view(trainer, view: ConsoleView) -> None:
    """Put the console callbacks printing ``view`` in the place of ``trainer``'s progress bar or log printer (a
    notebook's progress table is left as it is)."""
    callbacks = trainer.callback_handler.callbacks
    for i, callback in enumerate(callbacks):
        if type(callback) is ProgressCallback:
            callbacks[i] = ConsoleProgressCallback(view, callback.max_str_len)
        elif type(callback) is PrinterCallback:
            callbacks[i] = ConsolePrinterCallback(view)
