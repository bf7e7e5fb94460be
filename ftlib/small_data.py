"""Strategies for small training sets: a training budget in optimizer steps, re-initialised top blocks,
batch-norm statistics (frozen, or following the new data), weight averaging (EMA / SWA), and a linear probe
trained beside the fine-tuned model, the better of the two on validation kept (``--compare_head_only``).

Few-sample fine-tuning of pretrained encoders is unstable mostly for three reasons (Mosbach et al. 2021,
"On the stability of fine-tuning BERT"; Zhang et al. 2021, "Revisiting few-sample BERT fine-tuning"): too few
optimizer steps, a fresh head that starts far off, and top blocks too specialised to the pretraining task.
The head warm-up (head only for the first steps) is gradual unfreezing with two stages: see
:class:`ftlib.unfreeze.GradualUnfreezeCallback` and :class:`ftlib.trainer.FtTrainer`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from ftlib.anatomy import Anatomy

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


def set_batch_norm(model: nn.Module, mode: str = "train", momentum: float | None = None) -> int:
    """How the model's batch-norm layers behave in training; returns how many there are.

    ``"train"`` is PyTorch's behaviour: each training batch is normalised with its own statistics, and the running
    statistics (used at evaluation) follow them with ``momentum`` (the checkpoint's own value when None; 0.1 is
    PyTorch's default, and a checkpoint converted from TensorFlow often carries 0.01, so that after a short run
    its evaluation still mostly uses ImageNet's statistics). ``"frozen"`` keeps every batch-norm layer in
    evaluation mode, in training too: the pretrained statistics normalise training and evaluation alike, and
    only the affine weights (if they train) learn: the usual advice for small batches and small data.
    Models without batch norm (transformers, ConvNeXt's layer norm) are unaffected."""
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"batch norm mode must be one of {BATCH_NORM_MODES}, got {mode!r}")
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        if momentum is not None:
            layer.momentum = momentum
        if mode == "frozen":
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

    Evaluations during training use the averaged weights (:class:`ftlib.trainer.FtTrainer` swaps them in);
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


PROBE_DIR = "linear_probe"  # the probe's training log, inside the output directory
COMPARISON_FILE = "head_only_comparison.json"
MODEL_NAMES = {"fine_tuned": "fine-tuned", "head_only": "head only (linear probe)"}  # its "kept": key and wording
# what a linear probe resets: the head alone trains, at its own rate; nothing below it is re-initialised or staged
PROBE_SETTINGS = {"head_only": True, "freeze_lower_blocks": 0, "train_top_blocks": None, "gradual_unfreeze": 0,
                  "head_warmup_steps": 0.0, "reinit_top_blocks": 0, "probe_first": "no"}


def probe_settings(ft_args):
    """A copy of ``ft_args`` that trains a linear probe: :data:`PROBE_SETTINGS`, the head at --probe_learning_rate."""
    probe_ft = copy.copy(ft_args)
    for name, value in {**PROBE_SETTINGS, "head_learning_rate": ft_args.probe_learning_rate}.items():
        setattr(probe_ft, name, value)
    return probe_ft


def wants_probe(trainer, ft_args) -> bool:
    """Whether ``--compare_head_only`` trains a linear probe beside this (trained) run: ``yes``; ``small`` when the
    step budget lengthened training (a small set), no flag conflicts (:meth:`FineTuneArguments.probe_conflicts`) and
    the run is not sharded (FSDP, DeepSpeed: ``yes`` is refused there by :func:`ftlib.launch.check_launch`)."""
    mode = ft_args.compare_head_only
    sharded = getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False)
    if mode == "no" or (mode == "small" and (ft_args.probe_conflicts() or sharded or not trainer.lengthened_by_budget)):
        return False
    if trainer.eval_dataset is None:
        logger.warning("--compare_head_only: no validation split to compare on; the fine-tuned model is kept")
        return False
    return True


def compare_head_only(trainer, build, train_data, ft_args) -> tuple[Any, dict[str, float] | None]:
    """``--compare_head_only``: after ``trainer`` (the run, trained) train a linear probe with the same steps and seed
    (``build(args, train_data, ft_args=...)``: the recipe's trainer function, in ``linear_probe/``), evaluate both on
    the validation split and keep the better (:func:`choose_model`: the run's ``metric_for_best_model``, then the
    lower loss). Few labelled images of the kind the backbone was pretrained on are often classified better by
    the pretrained features left as they are than after fine-tuning them (Kumar et al. 2022, "Fine-tuning can
    distort pretrained features"), while data unlike the pretraining needs the fine-tuning.

    Returns ``(kept trainer, its train metrics or None when the fine-tuned run is kept)``; when the probe wins it
    writes to the run's output directory from then on, and ``ft_args`` is set to the probe's strategy (for the
    model card and the saved model). ``head_only_comparison.json`` in the output directory holds both evaluations."""
    from transformers import set_seed

    from ftlib.cv import fold_args
    from ftlib.hub import eval_key

    args = trainer.args
    output_dir = Path(args.output_dir)
    metric = eval_key(args.metric_for_best_model or "loss")
    greater = args.greater_is_better if args.greater_is_better is not None else metric != "eval_loss"
    fine_tuned = trainer.evaluate()

    probe_ft = probe_settings(ft_args)
    set_seed(args.seed)  # the probe starts from the state the run started from
    probe = build(fold_args(args, output_dir / PROBE_DIR), train_data, ft_args=probe_ft)
    logger.info("--compare_head_only: training a linear probe (the head alone, learning rate %g) to compare on %s",
                ft_args.probe_learning_rate, metric)
    probe_train = dict(probe.train().metrics)
    probed = probe.evaluate()
    if trainer.is_world_process_zero():  # --load_best_model_at_end's checkpoints: the probe is in memory
        for checkpoint in (output_dir / PROBE_DIR).glob("checkpoint-*"):
            shutil.rmtree(checkpoint, ignore_errors=True)

    kept, reason = choose_model(fine_tuned, probed, metric, greater)
    probe_wins = kept == "head_only"
    logger.info("--compare_head_only: %s %.4f (loss %.4f) fine-tuned, %.4f (loss %.4f) head only: keeping the %s "
                "model (%s)", metric, fine_tuned.get(metric, math.nan), fine_tuned.get("eval_loss", math.nan),
                probed.get(metric, math.nan), probed.get("eval_loss", math.nan), MODEL_NAMES[kept], reason)
    if trainer.is_world_process_zero():
        document = {"metric": metric, "greater_is_better": greater, "kept": kept, "reason": reason,
                    "fine_tuned": fine_tuned, "head_only": {**probed, "probe_learning_rate": ft_args.probe_learning_rate}}
        (output_dir / COMPARISON_FILE).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if not probe_wins:
        probe.model_wrapped = probe.model = None
        return trainer, None
    for name in (*PROBE_SETTINGS, "head_learning_rate"):
        setattr(ft_args, name, getattr(probe_ft, name))
    probe.args.output_dir = str(output_dir)  # predictions, the model and its card go where the run's would
    trainer.model_wrapped = trainer.model = None
    return probe, probe_train


def choose_model(fine_tuned: dict[str, float], probed: dict[str, float], metric: str, greater: bool) -> tuple[str, str]:
    """``(kept, reason)`` from the two evaluations on validation: ``"fine_tuned"`` or ``"head_only"``.

    The better ``metric`` wins (a missing or diverged, NaN, value ranks last). On a tie, the lower loss, but not
    when both classified every validation example correctly (``eval_accuracy`` 1): with no error to penalise
    overconfidence the loss only rewards confidence, which fine-tuning buys by rescaling the features, so the loss
    would always favour it; the probe, which left the pretrained model as it was, is kept then. Last, fine-tuned."""

    def finite(value: float, sign: float) -> float:
        return sign * value if math.isfinite(value) else -math.inf

    sign = 1.0 if greater else -1.0
    scores = {kind: finite(m.get(metric, math.nan), sign) for kind, m in (("fine_tuned", fine_tuned), ("head_only", probed))}
    if scores["fine_tuned"] != scores["head_only"]:
        return max(scores, key=scores.get), f"better {metric}"
    if fine_tuned.get("eval_accuracy") == probed.get("eval_accuracy") == 1.0:
        return "head_only", "both classified every validation example correctly: the unchanged pretrained model"
    losses = {kind: finite(m.get("eval_loss", math.nan), -1.0) for kind, m in (("fine_tuned", fine_tuned), ("head_only", probed))}
    if losses["fine_tuned"] != losses["head_only"]:
        return max(losses, key=losses.get), f"same {metric}, lower loss"
    return "fine_tuned", f"same {metric} and loss"


def comparison_card(output_dir: str | Path) -> list[str]:
    """The model card's lines on ``--compare_head_only`` (none without ``head_only_comparison.json``)."""
    path = Path(output_dir) / COMPARISON_FILE
    if not path.is_file():
        return []
    comparison = json.loads(path.read_text(encoding="utf-8"))
    metric = comparison["metric"]
    rows = [f"| {name} | {comparison[kind].get(metric, math.nan):.4f} | {comparison[kind].get('eval_loss', math.nan):.4f} |"
            for kind, name in MODEL_NAMES.items()]
    about = (f"Two models were trained with the same steps and seed, the whole model fine-tuned and the head alone on "
             f"the frozen pretrained model (learning rate {comparison['head_only']['probe_learning_rate']:g}); the "
             f"{MODEL_NAMES[comparison['kept']]} one is this model, kept on the validation split "
             f"({comparison.get('reason', 'the better score')}).")
    return ["## Fine-tuned or linear probe", "", about, "", f"| model | {metric} | eval_loss |", "|---|---|---|",
            *rows, ""]
