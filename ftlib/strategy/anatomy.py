"""Model anatomy: the embeddings, the ordered stack of blocks and the task head of *this* model.

Everything is discovered from the module tree, so a new architecture needs no table entry:

- **Backbone and head.** A transformers model keeps its backbone under ``model.base_model_prefix``
  (``bert``, ``vit``, ``model`` ...). The head is every other top-level child holding parameters
  (``classifier``; DistilBERT's ``pre_classifier`` + ``classifier``; DeBERTa's ``pooler`` + ``classifier``).
  A bare backbone (``BertModel``) or a plain ``nn.Module`` is all backbone, with no head. A detector or
  segmenter built on a transformers Backbone (DETR's ``model.backbone.model``, UperNet's ``backbone``) has that
  module as its backbone, and everything else (the detection transformer, the decode head) as its head.
- **Blocks.** The largest ``nn.ModuleList`` / ``nn.Sequential`` of same-type modules inside the backbone
  (``bert.encoder.layer``, ``efficientnet.encoder.blocks``). When every item of that stack is itself a
  stage holding such a stack (Swin ``encoder.layers[i].blocks[j]``, ConvNeXt and ResNet
  ``encoder.stages[i].layers[j]``), the blocks are the inner items in forward order, one level deep:
  layer-wise decay is then per block, as timm does it.
- **Everything else in the backbone** gets the layer of a neighbour, so that every parameter has one:
  names with "embed" (DeBERTa's ``encoder.rel_embeddings``) and parts registered before the first block go
  with the embeddings; a stage's own parts (Swin's ``downsample``, ConvNeXt's ``downsampling_layer``) go
  with the first block of their stage when registered before its blocks, else with the block before them;
  the rest (BERT pooler, ViT final layernorm, EfficientNet top conv) goes with the block before it, which
  after the last block is the top block. A part named as the last one (``final_*``, ``ln_f``, ``norm_f``,
  ``project_out``) goes with the top block wherever it is registered: OPT registers its ``final_layer_norm``
  before its layers.
- **Tied input and output embeddings** (GPT-2, Gemma, SmolLM2: ``lm_head.weight`` *is*
  ``model.embed_tokens.weight``): one tensor cannot sit in two layers, so it counts as the head under every name
  it goes by (the head's learning rate, the first stage of gradual unfreezing), as ULMFiT groups its tied
  encoder / decoder with the top; ``Anatomy.tied`` lists its names and :mod:`ftlib.strategy.freezing` says what
  ``--freeze_embeddings`` does to it.

ALBERT is the one architecture named here, because the module tree cannot show its weight sharing: its
``num_hidden_layers`` layers reuse ``num_hidden_groups`` ``albert_layer_groups`` (normally one), so its
blocks are the groups, and "the lower N blocks" means the lower N groups (see ``Anatomy.notes``).

Where the discovery fails, ``find_anatomy`` raises :class:`AnatomyError` naming what it found; the user
then passes ``blocks_pattern`` (recipe flag ``--blocks_pattern``), a regex for the block module paths.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, replace
from functools import cached_property

from torch import nn

# A PeftModel names parameters "base_model.model.<path>" (LoRA & co) or "base_model.<path>" (prompt learning).
PEFT_PREFIXES = ("base_model.model.", "base_model.")


class AnatomyError(ValueError):
    """The embeddings / blocks / head of a model cannot be found; the message says what was found."""


@dataclass(frozen=True)
class Anatomy:
    """Module paths (relative to the unwrapped model) of the embeddings, the blocks bottom -> top and the head.

    ``attached`` holds the backbone parts outside any block that belong to a block (pooler, final norm,
    stage downsampling) as ``(path, layer id)``; ``layer_id`` resolves a parameter name by its longest
    path prefix over all four. ``tied`` holds, per tensor shared by the embeddings and the head, its
    parameter names (embeddings first); every one of them, and whatever peft adds in their modules, resolves to
    the head.
    """

    embeddings: tuple[str, ...]
    blocks: tuple[str, ...]
    head: tuple[str, ...]
    notes: str = ""
    attached: tuple[tuple[str, int], ...] = ()
    tied: tuple[tuple[str, ...], ...] = ()

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @cached_property
    def _path_ids(self) -> dict[str, int]:
        ids = {path: 0 for path in self.embeddings}
        ids.update({path: i + 1 for i, path in enumerate(self.blocks)})
        ids.update(dict(self.attached))
        ids.update({path: self.num_blocks + 1 for path in self.head})
        return ids

    def layer_id(self, param_name: str) -> int:
        """0 = embeddings, 1..num_blocks = blocks bottom->top, num_blocks + 1 = head.

        Takes names of the plain model or of the same model wrapped by peft (``base_model.model.`` prefix,
        ``...lora_A.default.weight`` inside a block, ``classifier.modules_to_save.default.weight`` in the head).
        """
        names = [param_name] + [param_name[len(p) :] for p in PEFT_PREFIXES if param_name.startswith(p)]
        if any(_under_any(name, self._tied_modules) for name in names):
            return self.num_blocks + 1
        for name in names:
            parts = name.split(".")
            for end in range(len(parts), 0, -1):
                found = self._path_ids.get(".".join(parts[:end]))
                if found is not None:
                    return found
        raise AnatomyError(
            f"parameter {param_name!r} is under none of the anatomy's modules "
            f"(embeddings {list(self.embeddings)}, blocks {self.blocks[:1]}..., head {list(self.head)}); "
            "was the anatomy found on another model?"
        )

    @cached_property
    def _tied_modules(self) -> frozenset[str]:
        """The modules holding a tied tensor: what peft adds inside them (trainable token rows) goes with it."""
        return frozenset(name.rpartition(".")[0] for names in self.tied for name in names)

    def final_parts(self) -> tuple[str, ...]:
        """Backbone parts outside the blocks that sit on the top block (final norm, pooler), in registration order."""
        return tuple(path for path, layer in self.attached if layer == self.num_blocks)

    def group_names(self) -> list[str]:
        """Display names indexed by layer id: ``["embeddings", "block 0", ..., "head"]``."""
        return ["embeddings", *(f"block {i}" for i in range(self.num_blocks)), "head"]


def find_anatomy(model: nn.Module, blocks_pattern: str | None = None) -> Anatomy:
    """Find embeddings, blocks (bottom -> top) and head of a transformers model, a PeftModel or an ``nn.Module``.

    ``blocks_pattern`` overrides the block discovery: a regex matched with ``re.fullmatch`` against module
    paths; the matching modules that hold parameters, in registration order, are the blocks (a match inside
    another match is dropped). Paths are relative to the unwrapped model (``bert.encoder.layer.0``).
    ALBERT's blocks are its shared ``albert_layer_groups``: see the module docstring and ``notes``.
    """
    model = _unwrap_peft(model)
    backbone_path, backbone, head, notes = _split_backbone(model)
    if blocks_pattern is not None:
        blocks, stages = _blocks_from_pattern(model, backbone_path, blocks_pattern), {}
    else:
        blocks, stages = _discover_blocks(model, backbone_path, backbone)
    if _model_type(model) == "albert" and blocks_pattern is None:
        cfg = model.config
        notes = _join(
            notes,
            f"ALBERT shares weights: its {cfg.num_hidden_layers} layers reuse {cfg.num_hidden_groups} "
            f"layer group(s), so the blocks are the {len(blocks)} albert_layer_groups and 'the lower N blocks' "
            "means the lower N groups; freezing a group freezes every layer that reuses it.",
        )
    layer_of = _assign_backbone(backbone, backbone_path, blocks, stages)
    leftovers = _compress(backbone, backbone_path, set(blocks), layer_of)
    anatomy = Anatomy(
        embeddings=tuple(path for path, layer in leftovers if layer == 0),
        blocks=tuple(blocks),
        head=head,
        notes=notes,
        attached=tuple((path, layer) for path, layer in leftovers if layer != 0),
    )
    tied = _tied_embeddings(model, anatomy)
    if not tied:
        return anatomy
    pairs = "; ".join(f"{' = '.join(names)}" for names in tied)
    notes = _join(
        notes,
        f"Tied input / output embeddings ({pairs}): one tensor, counted as the head (the head's learning rate, the "
        "first stage of gradual unfreezing); --freeze_embeddings freezes it, and the LM head with it.",
    )
    return replace(anatomy, tied=tied, notes=notes)


def _tied_embeddings(model: nn.Module, anatomy: Anatomy) -> tuple[tuple[str, ...], ...]:
    """Names of each tensor that the head shares with the embeddings, embeddings' names first."""
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    head = anatomy.num_blocks + 1
    tied = []
    for names in names_of.values():
        layers = [anatomy.layer_id(name) for name in names]
        if len(names) > 1 and head in layers and 0 in layers:
            tied.append(tuple(sorted(names, key=lambda n: anatomy.layer_id(n) == head)))
    return tuple(tied)


# --- backbone and head -------------------------------------------------------------------------


def _unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (peft is only looked at when already imported)."""
    peft = sys.modules.get("peft")
    if peft is not None and isinstance(model, peft.PeftModel):
        return model.get_base_model()
    return model


def find_backbone(model: nn.Module) -> tuple[str, nn.Module] | None:
    """``(path, module)`` of the one transformers Backbone (``BackboneMixin``: Dinov2Backbone, ResNetBackbone,
    ConvNextBackbone, a timm backbone ...) inside a task model that is not itself one: DETR's
    ``model.backbone.model``, UperNet's ``backbone``. None when there is none, or several (no single backbone)."""
    model = _unwrap_peft(model)
    if _is_backbone_module(model):
        return None
    found = [(name, module) for name, module in model.named_modules() if name and _is_backbone_module(module)]
    outermost = [(n, m) for n, m in found if not any(n != o and _under(n, o) for o, _ in found)]
    return outermost[0] if len(outermost) == 1 else None


def _is_backbone_module(module: nn.Module) -> bool:
    return any(cls.__name__ == "BackboneMixin" for cls in type(module).__mro__)


def _head_around(model: nn.Module, backbone_path: str) -> tuple[str, ...]:
    """Every module path (and parameter held directly on an ancestor) outside ``backbone_path``, as few as possible:
    the siblings of each module on the way down to the backbone."""
    head: list[str] = []
    parts = backbone_path.split(".")
    for depth in range(len(parts)):
        ancestor_path = ".".join(parts[:depth])
        ancestor = model.get_submodule(ancestor_path)
        head += [_join_path(ancestor_path, n) for n, _ in ancestor.named_parameters(recurse=False)]
        head += [_join_path(ancestor_path, n) for n, child in ancestor.named_children()
                 if n != parts[depth] and _has_params(child)]
    return tuple(head)


def _split_backbone(model: nn.Module) -> tuple[str, nn.Module, tuple[str, ...], str]:
    """(backbone path, backbone, head paths, notes)."""
    nested = find_backbone(model)
    if nested is not None and re.search(r"For[A-Z]", type(model).__name__):
        # A detector or segmenter built on a transformers Backbone: the backbone is that module, and everything
        # else (DETR's transformer and prediction heads, UperNet's decode head) is the task head.
        path, backbone = nested
        return path, backbone, _head_around(model, path), ""
    prefix = getattr(model, "base_model_prefix", "") or ""
    backbone = getattr(model, prefix, None) if prefix else None
    if isinstance(backbone, nn.Module) and any(c is backbone for c in model.children()):
        head = [name for name, child in model.named_children() if name != prefix and _has_params(child)]
        head += [name for name, _ in model.named_parameters(recurse=False)]
        return prefix, backbone, tuple(head), ""
    name = type(model).__name__
    if prefix and re.search(r"For[A-Z]", name):
        # A task model whose backbone is not where transformers says: head and backbone cannot be told apart.
        raise AnatomyError(
            f"{name} has base_model_prefix={prefix!r} but no child {prefix!r}, so its task head cannot be "
            f"told from its backbone. Top-level children: {_children_summary(model)}."
        )
    what = "a bare backbone" if prefix else "not a transformers model"
    return "", model, (), f"{name} is {what}: the whole model is the backbone, there is no head."


# --- blocks ------------------------------------------------------------------------------------


def _discover_blocks(model: nn.Module, backbone_path: str, backbone: nn.Module) -> tuple[list[str], dict]:
    """(block paths bottom -> top, {stage path: its block paths}) from the largest same-type stack."""
    stacks = _stacks(backbone, backbone_path)
    if not stacks:
        raise AnatomyError(
            f"found no stack of blocks in {type(model).__name__}: no nn.ModuleList / nn.Sequential of "
            f"same-type modules holding parameters under {backbone_path or 'the model'!r}. "
            f"Top-level children: {_children_summary(model)}. "
            f"Candidate lists: {_containers_summary(backbone, backbone_path)}. "
            "Pass blocks_pattern (recipe flag --blocks_pattern), a regex matched with re.fullmatch against "
            "module paths, e.g. --blocks_pattern 'encoder\\.layer\\.\\d+'."
        )
    # Largest by parameter count; on a tie the outer one (ALBERT's single group holding a single layer).
    path, stack = max(stacks, key=lambda s: (_numel(s[1]), -s[0].count(".")))
    rivals = [p for p, s in stacks if _disjoint(p, path) and _numel(s) >= 0.5 * _numel(stack)]
    if rivals:
        # Two towers (encoder-decoder, text + vision): which order they stack in is the user's call.
        raise AnatomyError(
            f"{type(model).__name__} has several stacks of blocks of similar size: "
            f"{', '.join(repr(p) for p in [path, *rivals])}. Pass blocks_pattern (recipe flag "
            f"--blocks_pattern) to say which modules are the blocks, in order, e.g. "
            f"--blocks_pattern '({'|'.join(re.escape(p) for p in [path, *rivals])})\\.\\d+'."
        )
    items = [_join_path(path, name) for name, _ in stack.named_children()]
    if _model_type(model) == "albert":
        return items, {}  # the groups are the blocks: see the module docstring
    inner = [_inner_stack(child, item) for item, child in zip(items, stack.children())]
    if all(inner):  # every item is a stage: flatten one level
        stages = {
            item: [_join_path(p, n) for n, _ in s.named_children()] for item, (p, s) in zip(items, inner)
        }
        return [block for blocks in stages.values() for block in blocks], stages
    return items, {}


def _stacks(root: nn.Module, root_path: str) -> list[tuple[str, nn.Module]]:
    """ModuleLists / Sequentials under ``root`` whose children all have one type and that hold parameters."""
    found = []
    for name, module in root.named_modules():
        if _is_stack(module):
            found.append((_join_path(root_path, name), module))
    return found


def _is_stack(module: nn.Module) -> bool:
    if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
        return False
    return len({type(child) for child in module.children()}) == 1 and _has_params(module)


def _inner_stack(item: nn.Module, item_path: str) -> tuple[str, nn.Module] | None:
    """The stack a stage holds: the item itself or its largest direct child that is a stack, else None."""
    if _is_stack(item):
        return item_path, item
    inner = [(_join_path(item_path, n), c) for n, c in item.named_children() if _is_stack(c)]
    return max(inner, key=lambda s: _numel(s[1])) if inner else None


def _blocks_from_pattern(model: nn.Module, backbone_path: str, pattern: str) -> list[str]:
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise AnatomyError(f"blocks_pattern {pattern!r} is not a valid regex: {err}") from None
    blocks: list[str] = []
    for name, module in model.named_modules():
        inside_earlier = any(name.startswith(b + ".") for b in blocks)
        if name and regex.fullmatch(name) and not inside_earlier and _has_params(module):
            blocks.append(name)
    if not blocks:
        raise AnatomyError(
            f"blocks_pattern {pattern!r} matches no module holding parameters in {type(model).__name__} "
            f"(re.fullmatch on module paths). Module paths look like: {', '.join(_example_paths(model))}."
        )
    outside = [b for b in blocks if backbone_path and not _under(b, backbone_path)]
    if outside:
        raise AnatomyError(
            f"blocks_pattern {pattern!r} matches modules outside the backbone {backbone_path!r}: "
            f"{outside[:5]} (those are the task head)."
        )
    return blocks


# --- every backbone parameter gets a layer -------------------------------------------------------

# Backbone parts outside the blocks that run after the last block whatever their registration order.
_FINAL_PART = re.compile(r"(^|\.)(final_\w*|ln_f|norm_f|project_out)(\.|$)")


def _assign_backbone(
    backbone: nn.Module, backbone_path: str, blocks: list[str], stages: dict[str, list[str]]
) -> dict[str, int]:
    """Layer id of every backbone parameter name (full path), blocks and leftovers alike."""
    names = [_join_path(backbone_path, n) for n, _ in backbone.named_parameters(remove_duplicate=False)]
    index = {block: i for i, block in enumerate(blocks)}
    block_of = {name: _block_of(name, index) for name in names}
    first_pos: dict[int, int] = {}
    for pos, name in enumerate(names):
        if block_of[name] is not None:
            first_pos.setdefault(block_of[name], pos)
    stage_of_block = {index[b]: stage for stage, bs in stages.items() for b in bs}

    layer_of = {}
    for pos, name in enumerate(names):
        if block_of[name] is not None:
            layer_of[name] = block_of[name] + 1
            continue
        relative = name[len(backbone_path) + 1 :] if backbone_path else name
        stage = next((s for s in stages if _under(name, s)), None)
        before = [b for b, p in first_pos.items() if p < pos]
        if "embed" in relative.lower():
            layer_of[name] = 0
        elif _FINAL_PART.search(relative) and blocks:  # the last part, wherever registered: on the top block
            layer_of[name] = len(blocks)
        elif stage is not None:  # a stage's own part: with the block before it, or its stage's first block
            in_stage = [b for b in before if stage_of_block.get(b) == stage]
            layer_of[name] = (max(in_stage) if in_stage else index[stages[stage][0]]) + 1
        else:  # before the first block: embeddings; after a block: that block
            layer_of[name] = max(before) + 1 if before else 0
    return layer_of


def _compress(
    module: nn.Module, path: str, blocks: set[str], layer_of: dict[str, int], is_root: bool = True
) -> list[tuple[str, int]]:
    """Leftover parameters as (outermost module path with a single layer id, id), in registration order."""
    if path in blocks:
        return []
    names = [_join_path(path, n) for n, _ in module.named_parameters(remove_duplicate=False)]
    layers = {layer_of[n] for n in names}
    if not layers:
        return []
    holds_block = any(_under(b, path) for b in blocks) if path else bool(blocks)
    if len(layers) == 1 and not holds_block and not is_root:
        return [(path, layers.pop())]
    out = [(p, layer_of[p]) for p in (_join_path(path, n) for n, _ in module.named_parameters(recurse=False))]
    for name, child in module.named_children():
        out += _compress(child, _join_path(path, name), blocks, layer_of, is_root=False)
    return out


# --- small helpers ---------------------------------------------------------------------------------


def _block_of(name: str, index: dict[str, int]) -> int | None:
    parts = name.split(".")
    for end in range(len(parts) - 1, 0, -1):
        found = index.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


def _model_type(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "model_type", "") or ""


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _join_path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


def _under_any(name: str, paths: frozenset[str]) -> bool:
    parts = name.split(".")
    return any(".".join(parts[:end]) in paths for end in range(len(parts) - 1, 0, -1))


def _disjoint(a: str, b: str) -> bool:
    return not (_under(a, b) or _under(b, a))


def _join(*notes: str) -> str:
    return " ".join(n for n in notes if n)


def _children_summary(model: nn.Module) -> str:
    return ", ".join(f"{n} ({type(c).__name__})" for n, c in model.named_children()) or "none"


def _containers_summary(root: nn.Module, root_path: str, limit: int = 10) -> str:
    """Every ModuleList / Sequential with its length and child types, for the error message."""
    found = []
    for name, module in root.named_modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)):
            types = sorted({type(c).__name__ for c in module.children()})
            found.append(
                f"{_join_path(root_path, name) or '<root>'!r} ({len(module)} x {'/'.join(types) or '-'})"
            )
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return (", ".join(found[:limit]) + more) if found else "none"


def _example_paths(model: nn.Module, limit: int = 8) -> list[str]:
    """Items of the stacks found (the likeliest blocks) first, then other shallow module paths."""
    paths = [_join_path(p, n) for p, s in _stacks(model, "") for n, _ in list(s.named_children())[:2]]
    paths += [n for n, m in model.named_modules() if n and n.count(".") < 2 and _has_params(m)]
    return [repr(p) for p in dict.fromkeys(paths)][:limit]
