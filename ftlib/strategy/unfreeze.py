"""Gradual unfreezing (ULMFiT): train the head first, then unfreeze one more block group from the top
every K epochs or optimizer steps.

The stage is a pure function of the training position (``global_step`` or the whole epochs done), so a
run resumed from a checkpoint lands on the same stage as an uninterrupted one; the callback's state is
also saved in ``trainer_state.json`` (``stateful_callbacks``) so the position is visible there.
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ftlib.strategy.anatomy import Anatomy

logger = logging.getLogger(__name__)


def unfreeze_stages(anatomy: Anatomy, blocks_per_stage: int = 1) -> list[list[int]]:
    """Layer ids switched on at each stage: stage 0 is the head, then blocks from the top, embeddings last."""
    n = anatomy.num_blocks
    stages = [[n + 1]]
    below = list(range(n, 0, -1))
    for start in range(0, len(below), blocks_per_stage):
        stages.append(below[start : start + blocks_per_stage])
    stages[-1] = stages[-1] + [0]  # the embeddings thaw with the lowest blocks
    return stages


def staged_parameters(model, anatomy: Anatomy, blocks_per_stage: int = 1) -> list[list[str]]:
    """Parameter names switched on at each stage (see :func:`unfreeze_stages`). Only what is trainable now is
    staged: a parameter the freezing flags froze (``--freeze_embeddings``, ``--freeze_patterns``) stays frozen
    for the whole run, which is logged, and the group table shows it as never unfrozen."""
    layer_stages = unfreeze_stages(anatomy, blocks_per_stage)
    staged_layers = {layer for layers in layer_stages for layer in layers}
    named = list(model.named_parameters())
    trainable = [name for name, p in named if p.requires_grad]
    kept = {anatomy.layer_id(name) for name, p in named if not p.requires_grad and anatomy.layer_id(name) in staged_layers}
    if kept:
        labels = anatomy.group_names()
        logger.info(
            "gradual unfreezing: %s stay(s) frozen for the whole run (the freezing flags, e.g. --freeze_embeddings, win)",
            ", ".join(labels[layer] for layer in sorted(kept)),
        )
    return [[n for n in trainable if anatomy.layer_id(n) in set(layers)] for layers in layer_stages]


class GradualUnfreezeCallback(TrainerCallback, ExportableState):
    """Switches ``requires_grad`` on stage by stage at the start of optimizer steps.

    ``stages`` holds parameter names per stage; the parameters must already be in the optimizer
    (see :func:`ftlib.strategy.optim.build_param_groups`'s ``include``) so no optimizer is rebuilt.
    """

    def __init__(self, stages: list[list[str]], every: int, unit: str = "epoch", unfrozen_stages: int = 0):
        if every < 1:
            raise ValueError(f"--gradual_unfreeze must be >= 1, got {every}")
        if unit not in ("epoch", "step"):
            raise ValueError(f"--gradual_unfreeze_unit must be 'epoch' or 'step', got {unit!r}")
        self.stages = stages
        self.every = every
        self.unit = unit
        self.unfrozen_stages = unfrozen_stages

    def stage_at(self, global_step: int, epoch: float | None) -> int:
        """Number of stages trainable at this position (at least 1: the head)."""
        position = global_step if self.unit == "step" else math.floor((epoch or 0.0) + 1e-9)
        return min(len(self.stages), 1 + position // self.every)

    def apply(self, model, count: int) -> list[str]:
        """Make the first ``count`` stages trainable and the rest frozen; returns names newly unfrozen."""
        trainable = {name for stage in self.stages[:count] for name in stage}
        frozen = {name for stage in self.stages[count:] for name in stage}
        newly = []
        for name, param in model.named_parameters():
            if name in trainable and not param.requires_grad:
                param.requires_grad_(True)
                newly.append(name)
            elif name in frozen:
                param.requires_grad_(False)
        self.unfrozen_stages = count
        return newly

    def schedule(self) -> dict[str, str]:
        """When each staged parameter becomes trainable: ``"start"``, or ``"epoch K"`` / ``"step K"``."""
        return {
            name: "start" if i == 0 else f"{self.unit} {i * self.every}"
            for i, stage in enumerate(self.stages)
            for name in stage
        }

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        target = self.stage_at(state.global_step, state.epoch)
        if target != self.unfrozen_stages and model is not None:
            newly = self.apply(model, target)
            logger.info(
                "gradual unfreezing: step %d, stage %d/%d, %d tensors unfrozen",
                state.global_step, target, len(self.stages), len(newly),
            )

    def state(self) -> dict:
        return {
            "args": {"stages": self.stages, "every": self.every, "unit": self.unit},
            "attributes": {"unfrozen_stages": self.unfrozen_stages},
        }
