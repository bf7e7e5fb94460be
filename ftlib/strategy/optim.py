"""Optimizer parameter groups: discriminative / layer-wise learning rates, no decay on bias and norm.

Each group carries its own ``lr``. Trainer's schedulers are ``LambdaLR``s that multiply every group's
initial lr by the same factor, so the ratios between groups hold through warmup and decay.
"""

from __future__ import annotations

import inspect
import re

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from ftlib.core.options import option_name
from ftlib.strategy.anatomy import Anatomy


def layer_learning_rates(
    anatomy: Anatomy, base_lr: float, head_lr: float | None = None, layer_decay: float = 1.0
) -> list[float]:
    """Learning rate per layer id: the top block gets ``base_lr``, block k from the top ``base_lr * decay**k``,
    the embeddings sit one step below the lowest block, and the head gets ``head_lr`` (default ``base_lr``)."""
    n = anatomy.num_blocks
    rates = [base_lr * layer_decay ** (n - layer) for layer in range(n + 1)]
    rates.append(base_lr if head_lr is None else head_lr)
    return rates


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Biases and normalisation weights, which weight decay should not pull towards zero."""
    decay = set(Trainer.get_decay_parameter_names(None, model))
    return {name for name, _ in model.named_parameters() if name not in decay}


def is_lora_b(name: str) -> bool:
    """A LoRA B matrix (``...lora_B.<adapter>.weight``, ``lora_embedding_B``): the half LoRA+ speeds up."""
    return ".lora_B." in name or ".lora_embedding_B." in name


def build_param_groups(
    model: nn.Module,
    anatomy: Anatomy,
    base_lr: float,
    *,
    head_lr: float | None = None,
    layer_decay: float = 1.0,
    weight_decay: float = 0.0,
    include: set[str] | None = None,
    loraplus_lr_ratio: float | None = None,
) -> list[dict]:
    """One group per (layer, decay / no decay) holding ``params``, ``lr``, ``weight_decay`` and a ``name``.

    Parameters that do not require grad are left out, unless named in ``include`` (those gradual
    unfreezing will switch on later: they wait in the optimizer with no gradient). A tensor that goes by
    several names (tied embeddings) is in one group, once.

    ``loraplus_lr_ratio`` (LoRA+, Hayou et al. 2024): the LoRA B matrices get groups of their own, named
    ``"<layer> lora_B"``, at that multiple of their layer's rate (the A matrices, DoRA magnitudes and the rest
    keep the layer's rate).
    """
    rates = layer_learning_rates(anatomy, base_lr, head_lr, layer_decay)
    no_decay = no_decay_parameter_names(model)
    labels = anatomy.group_names()
    groups: dict[tuple[int, bool, bool], dict] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if id(param) in seen or not (param.requires_grad or (include and name in include)):
            continue
        seen.add(id(param))  # tied / shared weights belong to one group only
        layer = anatomy.layer_id(name)
        decays = name not in no_decay
        faster = loraplus_lr_ratio is not None and is_lora_b(name)
        key = (layer, faster, decays)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": rates[layer] * (loraplus_lr_ratio if faster else 1.0),
                "weight_decay": weight_decay if decays else 0.0,
                "name": f"{labels[layer]}{' lora_B' if faster else ''}{'' if decays else ' (no decay)'}",
                "layer_id": layer,
            }
        groups[key]["params"].append(param)
    if loraplus_lr_ratio is not None and not any(faster for _, faster, _ in groups):
        raise ValueError(f"--loraplus_lr_ratio {loraplus_lr_ratio:g}: the model has no trainable LoRA B matrix "
                         "(needs --lora)")
    return [groups[key] for key in sorted(groups)]


# Trainer's --optim values whose optimizer needs the model itself (GaLore / APOLLO projections, LOMO's fused
# update in the backward pass): they cannot take the parameter groups built here.
MODEL_BUILT_OPTIMIZERS = ("galore", "apollo", "lomo", "adalomo")


def resolve_optimizer(training_args: TrainingArguments, torch_optimizer: str | None, torch_kwargs: dict):
    """(optimizer class, kwargs without ``lr``): a ``torch.optim`` class named by the user, else Trainer's ``--optim``."""
    if torch_optimizer is None:
        optim = option_name(training_args.optim)
        if optim.startswith(MODEL_BUILT_OPTIMIZERS):
            raise ValueError(
                f"--optim {optim} builds its own parameter groups (or per-parameter hooks) from the model, which "
                "replaces ftlib's layer-wise groups; choose another --optim or --torch_optimizer"
            )
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args)
        kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
        return cls, kwargs
    cls = getattr(torch.optim, torch_optimizer, None)
    if not (inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)):
        names = sorted(
            n for n, c in vars(torch.optim).items() if inspect.isclass(c) and issubclass(c, torch.optim.Optimizer)
        )
        names.remove("Optimizer")
        raise ValueError(f"--torch_optimizer '{torch_optimizer}' is not a torch.optim optimizer; choose from {', '.join(names)}")
    # Every group carries its own lr and weight_decay, which would override (silently) or clash with these.
    per_group = {"lr": "--learning_rate", "weight_decay": "--weight_decay"}
    clash = [k for k in torch_kwargs if k in per_group]
    if clash:
        raise ValueError(
            f"--torch_optimizer_kwargs: {', '.join(map(repr, clash))} is set per parameter group; "
            f"use {', '.join(per_group[k] for k in clash)} instead"
        )
    accepted = inspect.signature(cls.__init__).parameters
    unknown = [k for k in torch_kwargs if k not in accepted]
    if unknown:
        raise ValueError(f"--torch_optimizer_kwargs: {cls.__name__} takes no argument {', '.join(map(repr, unknown))}")
    return cls, dict(torch_kwargs)


def create_optimizer(groups: list[dict], cls: type, kwargs: dict) -> torch.optim.Optimizer:
    """Instantiate ``cls`` over the groups; each group's ``lr`` / ``weight_decay`` overrides the defaults."""
    defaults = dict(kwargs)
    if "weight_decay" not in inspect.signature(cls.__init__).parameters:
        groups = [{k: v for k, v in g.items() if k != "weight_decay"} for g in groups]
    first_lr = groups[0]["lr"] if groups else 0.0
    return cls(groups, lr=first_lr, **defaults)


def span_names(names) -> str:
    """Layer names joined, consecutive blocks as one span: ``head, blocks 0-29`` (a 30-block decoder's frozen row
    would otherwise widen the table's first column to some 300 characters)."""
    parts, run = [], []

    def close_run() -> None:
        if run:
            parts.append(f"block {run[0]}" if len(run) == 1 else f"blocks {run[0]}-{run[-1]}")
            run.clear()

    for name in names:
        block = re.fullmatch(r"block (\d+)", name)
        if block and run and int(block[1]) == run[-1] + 1:
            run.append(int(block[1]))
            continue
        close_run()
        if block:
            run.append(int(block[1]))
        else:
            parts.append(name)
    close_run()
    return ", ".join(parts)


def format_group_table(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    unfrozen_at: dict[str, str] | None = None,
    anatomy: Anatomy | None = None,
) -> str:
    """A table of the optimizer's groups: parameters, trainable or frozen, learning rate, weight decay.

    ``unfrozen_at`` (gradual unfreezing: parameter name -> ``"start"`` / ``"epoch K"`` / ``"step K"``) adds
    a column saying when each group becomes trainable; a parameter it does not name is ``never`` unfrozen.
    With ``anatomy`` the row of parameters left out of the optimizer names their layers."""
    header = ("group", "params", "trainable", "lr", "weight_decay")
    rows = [header + (("unfrozen at",) if unfrozen_at is not None else ())]
    when = {}
    if unfrozen_at is not None:
        when = {id(p): unfrozen_at.get(name, "never") for name, p in model.named_parameters()}

    def unfrozen(params) -> tuple[str, ...]:
        if unfrozen_at is None:
            return ()
        return (", ".join(dict.fromkeys(when.get(id(p), "never") for p in params)),)

    grouped = set()
    for group in optimizer.param_groups:
        params = group["params"]
        grouped |= {id(p) for p in params}
        n_train = sum(p.numel() for p in params if p.requires_grad)
        n_all = sum(p.numel() for p in params)
        state = "yes" if n_train == n_all else ("frozen" if n_train == 0 else f"{n_train:,}")
        rows.append(
            (group.get("name", "?"), f"{n_all:,}", state, f"{group['lr']:.3g}", f"{group.get('weight_decay', 0.0):g}")
            + unfrozen(params)
        )
    left_out = {id(p): (name, p) for name, p in model.named_parameters() if id(p) not in grouped}
    outside = sum(p.numel() for _, p in left_out.values())
    if outside:
        label = "not optimised (frozen)"
        if anatomy is not None:
            names = anatomy.group_names()
            label = f"{span_names(dict.fromkeys(names[anatomy.layer_id(n)] for n, _ in left_out.values()))}: {label}"
        rows.append((label, f"{outside:,}", "frozen", "-", "-") + (("never",) if unfrozen_at is not None else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
