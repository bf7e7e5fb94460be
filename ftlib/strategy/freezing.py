"""Freeze and unfreeze parameters by model anatomy: embeddings, lower blocks, name patterns, head only.

Freezing sets ``requires_grad = False``. A frozen parameter may still sit in the optimizer: torch
optimizers skip parameters whose ``grad`` is ``None``, so it stays bit-identical, and unfreezing it later
(gradual unfreezing) needs no new optimizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

from ftlib.strategy.anatomy import Anatomy


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
    """Freeze parameters whose name matches any regex (``re.search``); a pattern matching nothing is an error."""
    frozen = []
    for pattern in patterns:
        regex = re.compile(pattern)
        hits = [name for name, _ in model.named_parameters() if regex.search(name)]
        if not hits:
            example = next(iter(n for n, _ in model.named_parameters()), "")
            raise ValueError(f"--freeze_patterns '{pattern}' matches no parameter name (names look like '{example}')")
        for name, param in model.named_parameters():
            if name in hits:
                param.requires_grad_(False)
        frozen += hits
    return frozen


def apply_freezing(model: nn.Module, anatomy: Anatomy, ft_args) -> set[int]:
    """Apply the freezing flags of :class:`ftlib.strategy.arguments.FineTuneArguments`; returns the frozen layer ids.

    With LoRA, peft has already frozen the base weights; layer freezing then also freezes the adapters
    of the frozen layers, so ``--freeze_lower_blocks`` means the same thing with and without LoRA.
    """
    frozen = layers_to_freeze(
        anatomy,
        embeddings=ft_args.freeze_embeddings,
        lower_blocks=ft_args.freeze_lower_blocks,
        top_blocks=ft_args.train_top_blocks,
        head_only=ft_args.head_only,
    )
    set_trainable(model, anatomy, frozen, False)
    if ft_args.freeze_patterns:
        freeze_patterns(model, ft_args.freeze_patterns)
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the freezing options leave no trainable parameter")
    return frozen


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors (ALBERT, tied embeddings) counted once."""
    seen: dict[int, bool] = {}
    sizes: dict[int, int] = {}
    for param in model.parameters():
        seen[id(param)] = param.requires_grad
        sizes[id(param)] = param.numel()
    trainable = sum(sizes[k] for k, flag in seen.items() if flag)
    return trainable, sum(sizes.values())
