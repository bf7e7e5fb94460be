"""The learning-rate range test (Smith 2017, fastai's ``lr_find``): train for a few steps while the learning rate
grows exponentially, watch the smoothed loss, stop when it diverges, and suggest a rate; then put everything back.

    from ftlib.run import lr_find
    result = lr_find(trainer)                 # any Trainer; FtTrainer sweeps its layer-wise groups together
    result.suggestion, result.rates, result.smoothed

Recipes: ``--lr_find`` (``--lr_find_start``, ``--lr_find_end``, ``--lr_find_steps``) runs :func:`run_lr_find` in
place of training. What the sweep does:

- it uses the trainer's own optimizer (built afresh by ``trainer.create_optimizer()``: FtTrainer's parameter
  groups, weight decay, ``--torch_optimizer``), data loader, loss (class weights, mixup, per-token), gradient
  accumulation, clipping (``--max_grad_norm``) and mixed precision;
- every group's rate is its own rate times one factor, so layer-wise decay and ``--head_learning_rate`` ratios
  hold; the rates reported are the base ``--learning_rate`` equivalents (the top block's rate);
- with gradual unfreezing or head warm-up, every stage is trainable during the sweep: the rate must suit the whole
  model that training ends up moving, not only the head that starts it;
- with several processes (DDP), gradients and losses are averaged over them by hand (the model is not wrapped, so
  nothing about the trainer changes); every process sees the same averaged loss and stops at the same step;
- afterwards the weights and buffers, ``requires_grad`` flags, train / eval modes, gradients, the trainer's
  optimizer attributes and the Python / NumPy / torch RNG states are what they were before: a following
  ``trainer.train()`` runs as if the sweep had not happened. :func:`lr_find` writes nothing; :func:`plot_lr_find`
  draws its result.
"""

from __future__ import annotations

import math
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PLOT_FILE = "lr_find.png"
SMOOTHING = 0.98  # fastai's beta for the exponential moving average of the loss
DIVERGENCE = 4.0  # stop once the smoothed loss is this many times its lowest value (fastai's rule)
MIN_POINTS = 5  # fewer recorded rates before divergence than this: too little to suggest from


@dataclass
class LRFindResult:
    """One sweep. ``rates``: the base learning rate of each step (``--learning_rate`` equivalent); ``losses``: the
    training loss of that step (averaged over processes), ``smoothed``: its bias-corrected moving average;
    ``diverged_at``: the index of the step whose loss diverged (the last one recorded), or None; ``suggestion``:
    the suggested base learning rate, or None with ``reason`` saying why there is none; ``group_ratios``: each
    parameter group's rate over the base rate (constant during the sweep)."""

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    diverged_at: int | None
    suggestion: float | None
    reason: str
    minimum: float | None = None  # the rate of the lowest smoothed loss before divergence
    group_ratios: dict[str, float] = field(default_factory=dict)


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction (Adam's): ``avg_i / (1 - beta**(i+1))``, so the first
    values are not pulled towards zero."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


def suggest_learning_rate(rates: list[float], smoothed: list[float], diverged_at: int | None = None
                          ) -> tuple[float | None, float | None, str]:
    """``(suggestion, rate at the minimum, reason)`` from a sweep, using only the part before divergence.

    The rule: the rate of the lowest smoothed loss, divided by 10 (Smith's "one order of magnitude below the
    minimum", fastai's ``minimum``). At the minimum the loss has stopped improving and is about to blow up, and
    the smoothed curve lags the raw one, so the minimum itself is already too high to train at; a decade below,
    the loss is still falling fast. It was preferred over the steepest descent of the smoothed loss, the other
    common rule, because the slope of a 100-point noisy curve is itself noisy (two neighbours decide it) where
    the minimum is a property of the whole curve. No suggestion (None and the reason) when fewer than
    :data:`MIN_POINTS` rates came before divergence, or when the smoothed loss never fell 1% below its values in
    the first tenth (it only rose: the range starts too high; or it stayed flat: nothing learns in the range)."""
    end = len(rates) if diverged_at is None else diverged_at
    if end < MIN_POINTS:
        if diverged_at is None:
            return None, None, f"only {end} rate(s) recorded: too few to suggest from (--lr_find_steps)"
        return None, None, (f"the loss diverged at {rates[end]:.2g}, after only {end} rate(s): too few to suggest "
                            f"from; start the sweep lower (--lr_find_start {rates[0] / 1000:.0e})")
    # fastai too leaves the first tenth of the sweep out of the search: one lucky first batch would otherwise
    # hold the minimum, and the smoothed curve has not settled there
    skip = end // 10
    best = skip + int(np.argmin(smoothed[skip:end]))
    minimum = rates[best]
    if smoothed[best] > 0.99 * max(smoothed[: skip + 1]):
        stop = f"before it diverged at {rates[end]:.2g}" if diverged_at is not None else f"up to {rates[end - 1]:.2g}"
        return None, minimum, (f"the smoothed loss never fell 1% below its value at the first rates ({rates[0]:.2g}) "
                               f"{stop}: the range starts too high (--lr_find_start {rates[0] / 1000:.0e}), "
                               "or nothing learns at these rates (check the data and what is frozen)")
    return minimum / 10, minimum, f"the rate of the lowest smoothed loss ({minimum:.2g}) / 10"


# -- the sweep ------------------------------------------------------------------------------------------------

def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class _Snapshot:
    """Everything the sweep changes, to put back: weights and buffers (copied to the CPU), ``requires_grad``,
    gradients, train / eval modes, the trainer's optimizer attributes, the gradual-unfreezing stage, RNG."""

    TRAINER_ATTRS = ("optimizer", "group_table", "_wrapped_trainable", "loss_is_scaled_for_ga",
                     "current_gradient_accumulation_steps")

    def __init__(self, trainer, model: torch.nn.Module):
        self.trainer, self.model = trainer, model
        tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}  # shared (tied) tensors once
        self.tensors = [(t, t.detach().to("cpu", copy=True)) for t in tensors.values()]
        self.params = list(dict.fromkeys(model.parameters()))
        self.requires_grad = [p.requires_grad for p in self.params]
        self.grads = [None if p.grad is None else p.grad.detach().clone() for p in self.params]
        self.modes = [(m, m.training) for m in model.modules()]
        self.attrs = {name: getattr(trainer, name) for name in self.TRAINER_ATTRS if hasattr(trainer, name)}
        gradual = getattr(trainer, "_gradual", None)
        self.stages = None if gradual is None else gradual.unfrozen_stages
        scaler = getattr(trainer.accelerator, "scaler", None)
        self.scaler = None if scaler is None else scaler.state_dict()
        self.rng = _rng_state()

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in self.tensors:
            tensor.copy_(saved.to(tensor.device))
        for param, flag, grad in zip(self.params, self.requires_grad, self.grads):
            param.requires_grad_(flag)
            param.grad = grad
        for module, mode in self.modes:
            module.training = mode
        for name, value in self.attrs.items():
            setattr(self.trainer, name, value)
        if self.stages is not None:
            self.trainer._gradual.unfrozen_stages = self.stages
        if self.scaler is not None:
            self.trainer.accelerator.scaler.load_state_dict(self.scaler)
        _set_rng_state(self.rng)


def _batches(trainer):
    """Optimizer steps' worth of micro-batches from the trainer's own data loader, epoch after epoch (each process
    gets its shard; an epoch's last step may be short, as in training), with the trainer's batch transform and loss
    normaliser (``get_batch_samples``)."""
    loader = trainer.get_train_dataloader()
    accumulation, device, epoch = trainer.args.gradient_accumulation_steps, trainer.args.device, 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        iterator, steps = iter(loader), 0
        while True:
            batches, num_items = trainer.get_batch_samples(iterator, accumulation, device)
            if batches:
                steps += 1
                yield batches, num_items
            if len(batches) < accumulation:
                break
        if not steps:
            raise ValueError("lr_find: the training data gives no batch")
        epoch += 1


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """DDP's gradient average, by hand (the model is not wrapped): one flat all-reduce. A parameter without a
    gradient on some process takes zeros there; one without a gradient anywhere keeps none."""
    import torch.distributed as dist

    present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    chosen = [p for p, on in zip(params, present.tolist()) if on]
    if not chosen:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in chosen]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for param in chosen:
        n = param.numel()
        param.grad = flat[offset:offset + n].view_as(param).to(param.dtype).clone()
        offset += n


def lr_find(trainer, start_lr: float = 1e-7, end_lr: float = 1.0, num_steps: int = 100,
            smoothing: float = SMOOTHING, divergence: float = DIVERGENCE) -> LRFindResult:
    """Sweep the base learning rate from ``start_lr`` to ``end_lr`` over ``num_steps`` optimizer steps
    (exponentially), scaling every parameter group of ``trainer.create_optimizer()`` by the same factor; stop when
    the smoothed loss exceeds ``divergence`` times its lowest value or a loss is not finite. Restores the model,
    the trainer and the RNG afterwards (see the module docstring); writes nothing. Every process of a distributed
    run must call it."""
    if not 0 < start_lr < end_lr:
        raise ValueError(f"lr_find: need 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if num_steps < 2:
        raise ValueError(f"lr_find: need at least 2 steps, got {num_steps}")
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        raise ValueError("--lr_find works with single-device and DDP runs, not FSDP or DeepSpeed")
    base_lr = trainer.args.learning_rate
    if not base_lr > 0:
        raise ValueError(f"lr_find: the trainer's learning_rate must be positive (it sets the group ratios), got {base_lr}")
    model = trainer.model
    snapshot = _Snapshot(trainer, model)
    try:
        trainer.optimizer = None  # a fresh optimizer with the run's groups; the trainer's own (if any) is untouched
        optimizer = trainer.create_optimizer()
        gradual = getattr(trainer, "_gradual", None)
        if gradual is not None:  # the whole model that training will move, not only the first stage
            gradual.apply(model, len(gradual.stages))
        initial = [group["lr"] for group in optimizer.param_groups]
        ratios = {str(g.get("name", i)): lr / base_lr for i, (g, lr) in enumerate(zip(optimizer.param_groups, initial))}
        params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
        if not params:
            raise ValueError("lr_find: no parameter of the optimizer is trainable (everything is frozen)")
        if hasattr(trainer, "_wrapped_trainable"):  # FtTrainer: the sweep averages every gradient itself (below)
            trainer._wrapped_trainable = {id(p) for p in params}
        return _sweep(trainer, model, optimizer, initial, params, base_lr, start_lr, end_lr, num_steps,
                      smoothing, divergence, ratios)
    finally:
        model.zero_grad(set_to_none=True)
        snapshot.restore()


def _sweep(trainer, model, optimizer, initial, params, base_lr, start_lr, end_lr, num_steps, smoothing,
           divergence, ratios) -> LRFindResult:
    accelerator = trainer.accelerator
    world = accelerator.num_processes
    scaler = getattr(accelerator, "scaler", None)
    max_norm = trainer.args.max_grad_norm
    rates, losses, smoothed = [], [], []
    diverged_at, avg, best = None, 0.0, math.inf
    model.zero_grad(set_to_none=True)
    steps = _batches(trainer)
    for step in range(num_steps):
        rate = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
        for group, lr in zip(optimizer.param_groups, initial):
            group["lr"] = lr * rate / base_lr
        batches, num_items = next(steps)
        trainer.current_gradient_accumulation_steps = len(batches)
        loss = torch.zeros((), device=trainer.args.device)
        for inputs in batches:
            try:
                with accelerator.autocast():
                    loss += trainer.training_step(model, inputs, num_items).float()
            except FloatingPointError:  # FtTrainer's stop on a non-finite loss: here, divergence
                loss += math.inf
                break
        if world > 1:
            loss = accelerator.reduce(loss, reduction="mean")  # the same value, so the same decision, everywhere
            _average_gradients(params, world)
        value = float(loss)
        rates.append(rate)
        losses.append(value)
        if not math.isfinite(value):
            smoothed.append(math.inf)
            diverged_at = step
            break
        avg = smoothing * avg + (1 - smoothing) * value
        smoothed.append(avg / (1 - smoothing ** (step + 1)))
        best = min(best, smoothed[-1])
        if smoothed[-1] > divergence * best:
            diverged_at = step
            break
        if scaler is not None:
            scaler.unscale_(optimizer)
        if max_norm and max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        model.zero_grad(set_to_none=True)
    suggestion, minimum, reason = suggest_learning_rate(rates, smoothed, diverged_at)
    return LRFindResult(rates, losses, smoothed, diverged_at, suggestion, reason, minimum, ratios)


# -- plot and the recipes' entry point --------------------------------------------------------------------------

def plot_lr_find(result: LRFindResult, path: str | Path) -> Path:
    """Loss against the base learning rate (log scale): raw and smoothed, the suggestion and the divergence."""
    from ftlib.outputs.report_plots import _save, plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    end = len(result.rates) if result.diverged_at is None else result.diverged_at
    finite = [(r, s) for r, s in zip(result.rates, result.smoothed) if math.isfinite(s)]
    ax.plot(result.rates, [v if math.isfinite(v) else np.nan for v in result.losses], color="tab:blue", alpha=0.3,
            label="training loss")
    if finite:
        ax.plot(*zip(*finite), color="tab:blue", label="smoothed")
    if result.minimum is not None:
        ax.axvline(result.minimum, color="gray", linestyle=":", label=f"lowest smoothed loss ({result.minimum:.2g})")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="tab:green", linestyle="--", label=f"suggested ({result.suggestion:.2g})")
    if result.diverged_at is not None:
        ax.axvline(result.rates[result.diverged_at], color="tab:red", alpha=0.6,
                   label=f"diverged ({result.rates[result.diverged_at]:.2g})")
    shown = [s for s in result.smoothed[:max(end, 1)] if math.isfinite(s)]
    raw = [v for v in result.losses if math.isfinite(v)]
    if shown and raw:  # the explosion at the end would flatten the rest of the curve
        low, high = min(min(raw), min(shown)), max(shown)
        ax.set_ylim(low - 0.05 * (high - low + 1e-12), high + 0.25 * (high - low + 1e-12))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (base --learning_rate; every group scaled with it)")
    ax.set_ylabel("loss")
    title = (f"LR range test: suggested --learning_rate {result.suggestion:.2g}" if result.suggestion is not None
             else "LR range test: no suggestion")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_destination(output_dir: str | Path) -> Path:
    """Where a recipe's ``--lr_find`` puts its plot: ``OUTPUT_DIR/lr_find.png`` when the output directory is new
    or holds nothing else (a previous plot), so the sweep leaves only the plot there; a directory holding anything
    else (a finished model, checkpoints, another run's lock) is left untouched and the plot goes to a new
    temporary folder, whose path is printed."""
    root = Path(output_dir)
    if not root.exists() or all(p.name == PLOT_FILE for p in root.iterdir()):
        return root / PLOT_FILE
    return Path(tempfile.mkdtemp(prefix="ftlib-lr-find-")) / PLOT_FILE


def suggested_flags(suggestion: float, training_args, ft_args) -> str:
    """The command-line flags that train at ``suggestion``: ``--learning_rate``, and ``--head_learning_rate`` at
    the same ratio to it as in the sweep when that flag is set (it is absolute, not relative to the base)."""
    flags = f"--learning_rate {suggestion:.2g}"
    if getattr(ft_args, "head_learning_rate", None) is not None:
        head = suggestion * ft_args.head_learning_rate / training_args.learning_rate
        flags += f" --head_learning_rate {head:.2g}"
    return flags


def run_lr_find(trainer, ft_args) -> dict[str, float]:
    """A recipe's ``--lr_find``: the sweep on every process; on the main one, the plot (see
    :func:`plot_destination`) and a summary with the flags to use. Nothing else is written; returns
    ``{"lr_find_suggestion": rate}`` (empty without a suggestion)."""
    main = trainer.is_world_process_zero()
    destination = plot_destination(trainer.args.output_dir) if main else None
    result = lr_find(trainer, ft_args.lr_find_start, ft_args.lr_find_end, ft_args.lr_find_steps)
    if not main:
        return {} if result.suggestion is None else {"lr_find_suggestion": result.suggestion}
    plot = plot_lr_find(result, destination)
    lines = [(f"LR range test: {len(result.rates)} of {ft_args.lr_find_steps} steps, base learning rate "
              f"{result.rates[0]:.2g} to {result.rates[-1]:.2g} (every parameter group scaled with it)")]
    if result.minimum is not None:
        lowest = result.smoothed[result.rates.index(result.minimum)]
        lines.append(f"  lowest smoothed loss {lowest:.4g} at {result.minimum:.2g}")
    if result.diverged_at is not None:
        lines.append(f"  diverged at {result.rates[result.diverged_at]:.2g} (step {result.diverged_at + 1}): "
                     "the sweep stopped there")
    if result.suggestion is not None:
        lines.append(f"  suggested ({result.reason}): {suggested_flags(result.suggestion, trainer.args, ft_args)}")
    else:
        lines.append(f"  no suggestion: {result.reason}")
    lines.append(f"  plot: {plot}")
    lines.append("Nothing was trained or saved: weights, optimizer, RNG and output directory are as before "
                 f"(the output directory holds at most {PLOT_FILE}).")
    print("\n".join(lines), flush=True)
    return {} if result.suggestion is None else {"lr_find_suggestion": result.suggestion}
