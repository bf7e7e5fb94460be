"""Freeze and unfreeze parameters by model anatomy: embeddings, lower blocks, name patterns, head only.

Freezing sets ``requires_grad = False``. A frozen parameter may still sit in the optimizer: torch
optimizers skip parameters whose ``grad`` is ``None``, so it stays bit-identical, and unfreezing it later
(gradual unfreezing) needs no new optimizer.

Tied input / output embeddings are one tensor, which the anatomy counts as the head (``Anatomy.tied``). So
freezing the lower blocks, training the top blocks or the head only leave it training, and ``--freeze_embeddings``
freezes it, and with it the LM head; either way a log line says so. A ``--freeze_patterns`` match on one of its
names (``lm_head.weight``) freezes it under the other too, also said.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from torch import nn

from ftlib.strategy.anatomy import Anatomy

logger = logging.getLogger(__name__)


def layers_to_freeze(
    anatomy: Anatomy,
    *,
    embeddings: bool = False,
    lower_blocks: int = 0,
    top_blocks: int | None = None,
    head_only: bool = False,
) -> set[int]:
    """Layer ids (0 = embeddings, 1..n = blocks, n + 1 = head) that the options freeze."""
    n = anatomy.num_blocks
    for name, value in (("freeze_lower_blocks", lower_blocks), ("train_top_blocks", top_blocks)):
        if value is not None and value > n:
            raise ValueError(
                f"--{name}={value} but the model has only {n} blocks "
                f"({anatomy.blocks[0]} ... {anatomy.blocks[-1]})" if n else f"--{name}={value} but the model has no blocks"
            )
    frozen: set[int] = set()
    if embeddings:
        frozen.add(0)
    if lower_blocks:
        frozen |= set(range(lower_blocks + 1))  # lower blocks sit on the embeddings: freeze them too
    if top_blocks is not None:
        frozen |= set(range(n - top_blocks + 1))
    if head_only:
        frozen |= set(range(n + 1))
    return frozen


def set_trainable(model: nn.Module, anatomy: Anatomy, layer_ids: Iterable[int], trainable: bool) -> list[str]:
    """Set ``requires_grad`` on every parameter of the given layers; returns the names touched."""
    wanted = set(layer_ids)
    touched = []
    for name, param in model.named_parameters():
        if anatomy.layer_id(name) in wanted:
            param.requires_grad_(trainable)
            touched.append(name)
    return touched


def freeze_patterns(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Freeze parameters whose name matches any regex (``re.search``); a pattern matching nothing is an error.

    Every name of a shared tensor is matched (``lm_head.weight`` of tied embeddings too); freezing it under one
    name freezes it under the others, which is logged."""
    named = list(model.named_parameters(remove_duplicate=False))
    names_of: dict[int, list[str]] = {}
    for name, param in named:
        names_of.setdefault(id(param), []).append(name)
    frozen = []
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = [name for name, _ in named if regex.search(name)]
        if not hits:
            example = next(iter(n for n, _ in named), "")
            raise ValueError(f"--freeze_patterns '{pattern}' matches no parameter name (names look like '{example}')")
        for name, param in named:
            if name in hits:
                param.requires_grad_(False)
                others = [n for n in names_of[id(param)] if n != name and not regex.search(n)]
                if others:
                    logger.info("--freeze_patterns '%s' freezes %s, which is also %s (one tensor, tied): frozen too",
                                pattern, name, ", ".join(others))
        frozen += hits
    return frozen


def apply_freezing(model: nn.Module, anatomy: Anatomy, ft_args) -> set[int]:
    """Apply the freezing flags of :class:`ftlib.strategy.arguments.FineTuneArguments`; returns the frozen layer ids.

    With LoRA, peft has already frozen the base weights; layer freezing then also freezes the adapters
    of the frozen layers, so ``--freeze_lower_blocks`` means the same thing with and without LoRA. Tied
    embeddings: see the module docstring.
    """
    frozen = layers_to_freeze(
        anatomy,
        embeddings=ft_args.freeze_embeddings,
        lower_blocks=ft_args.freeze_lower_blocks,
        top_blocks=ft_args.train_top_blocks,
        head_only=ft_args.head_only,
    )
    set_trainable(model, anatomy, frozen, False)
    if anatomy.tied and 0 in frozen:
        _freeze_tied(model, anatomy, ft_args.freeze_embeddings)
    if ft_args.freeze_patterns:
        freeze_patterns(model, ft_args.freeze_patterns)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the freezing options leave no trainable parameter")
    return frozen


def _freeze_tied(model: nn.Module, anatomy: Anatomy, freeze_embeddings: bool) -> None:
    """The embeddings are frozen: freeze the tied matrix with them (``--freeze_embeddings``), or say that it,
    being the head too, keeps training (the other flags freeze the embeddings only as the layer below the blocks)."""
    by_name = dict(model.named_parameters(remove_duplicate=False))
    for names in anatomy.tied:
        present = [n for n in by_name if any(n == t or n.endswith("." + t) for t in names)]
        params = {id(by_name[n]): by_name[n] for n in present}.values()
        if not any(p.requires_grad for p in params):
            continue  # frozen already (LoRA leaves the base weights frozen)
        shared = " = ".join(names)
        if freeze_embeddings:
            for param in params:
                param.requires_grad_(False)
            logger.info("--freeze_embeddings freezes %s: the input embeddings and the LM head share this matrix (tied), "
                        "so the LM head is frozen too", shared)
        else:
            logger.info("%s is both the input embeddings and the LM head (tied): it counts as the head and keeps "
                        "training; --freeze_embeddings would freeze it", shared)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors (ALBERT, tied embeddings) counted once."""
    seen: dict[int, bool] = {}
    sizes: dict[int, int] = {}
    for param in model.parameters():
        seen[id(param)] = param.requires_grad
        sizes[id(param)] = param.numel()
    trainable = sum(sizes[k] for k, flag in seen.items() if flag)
    return trainable, sum(sizes.values())
