"""Strategies for small training sets: a training budget in optimizer steps, re-initialised top blocks,
batch-norm statistics (frozen, or following the new data), weight averaging (EMA / SWA), and a linear probe
trained beside the fine-tuned model, the better of the two on validation kept (``--compare_head_only``).

Few-sample fine-tuning of pretrained encoders is unstable mostly for three reasons (Mosbach et al. 2021,
"On the stability of fine-tuning BERT"; Zhang et al. 2021, "Revisiting few-sample BERT fine-tuning"): too few
optimizer steps, a fresh head that starts far off, and top blocks too specialised to the pretraining task.
The head warm-up (head only for the first steps) is gradual unfreezing with two stages: see
:class:`ftlib.strategy.unfreeze.GradualUnfreezeCallback` and :class:`ftlib.training.trainer.FtTrainer`.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from ftlib.strategy.anatomy import Anatomy

logger = logging.getLogger(__name__)

AVERAGE_FILE = "weight_average.safetensors"


def budget_epochs(num_rows: int, rows_per_step: int, epochs: float, min_steps: int) -> float:
    """The number of epochs that gives at least ``min_steps`` optimizer steps (``epochs`` when it already does).

    ``rows_per_step`` is the global batch: per-device batch x processes x accumulation steps. Whole epochs, so
    that every row is seen equally often.
    """
    steps_per_epoch = max(1, math.ceil(num_rows / rows_per_step))
    if min_steps <= 0 or epochs * steps_per_epoch >= min_steps:
        return epochs
    return float(math.ceil(min_steps / steps_per_epoch))


BATCH_NORM_MODES = ("train", "frozen")


def set_batch_norm(model: nn.Module, mode: str = "train", momentum: float | None = None,
                   anatomy: Anatomy | None = None) -> int:
    """How the model's batch-norm layers behave in training; returns how many there are.

    ``"train"`` is PyTorch's behaviour: each training batch is normalised with its own statistics, and the running
    statistics (used at evaluation) follow them with ``momentum`` (the checkpoint's own value when None; 0.1 is
    PyTorch's default, and a checkpoint converted from TensorFlow often carries 0.01, so that after a short run
    its evaluation still mostly uses ImageNet's statistics). ``"frozen"`` keeps every batch-norm layer in
    evaluation mode, in training too: the pretrained statistics normalise training and evaluation alike, and
    only the affine weights (if they train) learn: the usual advice for small batches and small data. With
    ``anatomy``, the head's batch-norm layers train in either mode: a fresh head (UperNet's decode head on a
    pretrained backbone) has no statistics to keep. Models without batch norm (transformers, ConvNeXt's layer norm)
    are unaffected."""
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"batch norm mode must be one of {BATCH_NORM_MODES}, got {mode!r}")
    head = anatomy.num_blocks + 1 if anatomy is not None else None
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for name, layer in layers:
        if momentum is not None:
            layer.momentum = momentum
        if mode == "frozen" and (head is None or anatomy.layer_id(name) != head):
            # model.train() runs before every training step and would switch the layer back: a pre-hook runs
            # after it, before each forward.
            layer.register_forward_pre_hook(_keep_eval)
    return len(layers)


def _keep_eval(module: nn.Module, _inputs) -> None:
    if module.training:
        module.eval()


@torch.no_grad()
def reinit_top_blocks(model: nn.Module, anatomy: Anatomy, count: int) -> list[str]:
    """Re-initialise the top ``count`` blocks and what is attached to them (BERT's pooler) with the model's own
    ``_init_weights``: pretraining-specific top layers hurt few-sample fine-tuning (Zhang et al. 2021).
    Returns the module paths re-initialised. Call before LoRA wraps the model."""
    if count <= 0:
        return []
    if count > anatomy.num_blocks:
        raise ValueError(f"--reinit_top_blocks {count}: the model has only {anatomy.num_blocks} blocks")
    init_fn = getattr(model, "_init_weights", None)
    if init_fn is None:
        raise ValueError("--reinit_top_blocks needs a transformers model (one with _init_weights)")
    first = anatomy.num_blocks - count + 1  # layer ids of blocks start at 1
    paths = [path for i, path in enumerate(anatomy.blocks, start=1) if i >= first]
    paths += [path for path, layer in anatomy.attached if layer >= first]
    for path in paths:
        module = model.get_submodule(path)
        for sub in module.modules():
            # transformers' init functions skip tensors flagged as loaded from the checkpoint
            for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
                if getattr(tensor, "_is_hf_initialized", False):
                    tensor._is_hf_initialized = False
            init_fn(sub)
    logger.info("re-initialised the top %d block(s): %s", count, ", ".join(paths))
    return paths


class WeightAveragingCallback(TrainerCallback):
    """Keeps an average of the weights during training: ``ema`` (exponential, with the usual warm-up of the
    decay, ``min(decay, (1 + t) / (10 + t))``) or ``swa`` (the plain mean of the weights after each optimizer
    step from ``start`` (a fraction of training) on).

    Evaluations during training use the averaged weights (:class:`ftlib.training.trainer.FtTrainer` swaps them in);
    at the end of training they replace the model's weights, so the final evaluation, the predictions and the
    saved model are the averaged model. The average is saved in each checkpoint (``weight_average.safetensors``)
    and restored on resume. Only weights that ever train are averaged; a frozen weight equals its average.
    """

    def __init__(self, kind: str, decay: float = 0.999, start: float = 0.5):
        if kind not in ("ema", "swa"):
            raise ValueError(f"--weight_averaging must be 'ema' or 'swa', got {kind!r}")
        self.kind, self.decay, self.start = kind, decay, start
        self.average: dict[str, torch.Tensor] = {}
        self.count = 0  # updates so far
        self.model: nn.Module | None = None
        self.finished = False

    def attach(self, model: nn.Module) -> None:
        self.model = model

    def _factor(self, state) -> float | None:
        """Weight of the current weights in the update, or None before SWA starts."""
        if self.kind == "ema":
            return 1.0 - min(self.decay, (1 + self.count) / (10 + self.count))
        if state.global_step < self.start * state.max_steps:
            return None
        return 1.0 / (self.count + 1)

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        factor = self._factor(state)
        if factor is None or self.model is None:
            return
        for name, param in self.model.named_parameters():
            if not param.requires_grad and name not in self.average:
                continue
            if name not in self.average:
                # first time trainable: it was frozen (unchanged) so far, or this is the first update
                self.average[name] = param.detach().float().clone()
            else:
                self.average[name].lerp_(param.detach().float(), factor)
        self.count += 1

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the model's weights and the averages (twice restores both)."""
        params = dict(self.model.named_parameters())
        for name, avg in self.average.items():
            current = params[name].detach().float().clone()
            params[name].copy_(avg.to(params[name].dtype))
            self.average[name] = current

    def on_train_end(self, args, state, control, **kwargs):
        if self.average and not self.finished:
            self.swap()  # the model now holds the averaged weights
            self.finished = True
            logger.info("weight averaging (%s): the model holds the average of %d updates", self.kind, self.count)

    def on_save(self, args, state, control, **kwargs):
        if self.average and state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                save_file({k: v.contiguous() for k, v in self.average.items()}, str(folder / AVERAGE_FILE),
                          metadata={"count": str(self.count), "kind": self.kind})

    def load(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / AVERAGE_FILE
        if path.is_file():
            from safetensors import safe_open

            self.average = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                self.count = int(handle.metadata()["count"])


# what a linear probe resets: the head alone trains, at its own rate; nothing below it is re-initialised or staged
PROBE_SETTINGS = {"head_only": True, "freeze_lower_blocks": 0, "train_top_blocks": None, "gradual_unfreeze": 0,
                  "head_warmup_steps": 0.0, "reinit_top_blocks": 0, "probe_first": "no"}


def probe_settings(ft_args):
    """A copy of ``ft_args`` that trains a linear probe: :data:`PROBE_SETTINGS`, the head at --probe_learning_rate."""
    probe_ft = copy.copy(ft_args)
    for name, value in {**PROBE_SETTINGS, "head_learning_rate": ft_args.probe_learning_rate}.items():
        setattr(probe_ft, name, value)
    return probe_ft
