"""Per-group learning rates and the unfreezing stage in every training log.

Trainer logs one ``learning_rate`` (the first group's). With layer-wise rates, a head rate and gradual
unfreezing, that hides the strategy; :class:`GroupLearningRateCallback` adds ``lr/<group>`` for every
optimizer parameter group and ``unfreeze/stage`` (how many stages train) to each training log, before the
trackers (``--report_to tensorboard`` ...) see it, and to ``state.log_history`` (``trainer_state.json``), which
the report (:mod:`ftlib.outputs.report`) draws.
"""

from __future__ import annotations

import re

from transformers import TrainerCallback

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
