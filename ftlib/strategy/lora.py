"""LoRA through peft: a config per architecture family, the task head trained and saved, adapter or merged saves."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ftlib.strategy.anatomy import Anatomy, find_backbone

# Attention projections per model_type (query + value, as in the LoRA paper). Families that are not
# listed fall back to peft's "all-linear" (every Linear in the backbone except the output layer).
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"],
    "albert": ["query", "value"],
    "camembert": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "modernbert": ["Wqkv"],
    # Vision transformers: transformers 5.x renamed their query / value to q_proj / v_proj; both spellings are
    # listed so that either version is adapted (peft needs one name to match, not all).
    "vit": ["query", "value", "q_proj", "v_proj"],
    "deit": ["query", "value", "q_proj", "v_proj"],
    "beit": ["query", "value", "q_proj", "v_proj"],
    "swin": ["query", "value", "q_proj", "v_proj"],
    "dinov2": ["query", "value", "q_proj", "v_proj"],
    "convnext": ["pwconv1", "pwconv2"],
    "efficientnet": ["expand_conv", "project_conv"],
    "resnet": ["convolution"],
    # Decoders: every linear layer of attention and MLP (as QLoRA does; attention alone trails full fine-tuning
    # there). The LM head and the embeddings are left out: they are the vocabulary's, and large.
    **{
        family: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for family in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "smollm3", "olmo", "olmo2")
    },
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # Conv1D layers: attention's c_attn and c_proj, the MLP's c_fc and c_proj
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}

# peft task types whose head is the pretrained LM head, not a new one: it stays frozen under LoRA.
PRETRAINED_HEAD_TASKS = ("CAUSAL_LM",)


def default_target_modules(model: nn.Module) -> list[str] | str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return DEFAULT_TARGET_MODULES.get(model_type, "all-linear")


def backbone_targets(model: nn.Module, backbone_path: str, names: list[str] | None) -> str:
    """A peft ``target_modules`` regex for the modules inside a detector's or segmenter's backbone only: ``names``
    (the user's), else the backbone family's defaults, else every Linear in it. The same names in the head (DETR's
    decoder has ``q_proj`` too) are left alone: the head trains in full."""
    backbone = model.get_submodule(backbone_path)
    names = names or DEFAULT_TARGET_MODULES.get(getattr(getattr(backbone, "config", None), "model_type", None))
    if names:
        return rf"^{re.escape(backbone_path)}\..*\.({'|'.join(re.escape(n) for n in names)})$"
    linear = [f"{backbone_path}.{n}" for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ValueError(f"LoRA: the backbone {backbone_path} ({type(backbone).__name__}) has no Linear layer; set "
                         "--lora_target_modules to module names inside it")
    return "^(" + "|".join(re.escape(n) for n in linear) + ")$"


def unambiguous_modules(model: nn.Module, paths: tuple[str, ...] | list[str]) -> list[str]:
    """``paths`` as peft ``modules_to_save`` names that match only themselves: peft matches every module whose
    name *ends with* one (``model.encoder`` would also take a backbone's ``model.backbone.model.encoder``), so
    a path that another module's name ends with is replaced by its children, down to names no other module ends
    with; a ModuleList (which peft cannot wrap) by its items."""
    names = [n for n, _ in model.named_modules()]
    out: list[str] = []
    for path in paths:
        clash = [n for n in names if n.endswith(path) and n != path and not n.startswith(path + ".")]
        module = model.get_submodule(path)
        container = isinstance(module, (nn.ModuleList, nn.ModuleDict))  # peft wraps modules that run, not lists
        if not clash and not container:
            out.append(path)
            continue
        if next(module.parameters(recurse=False), None) is not None:
            raise ValueError(f"LoRA: the head module {path} cannot be saved with the adapter: peft would also take "
                             f"{clash[0]} (it matches module names by suffix); use --lora_save merged")
        children = [f"{path}.{n}" for n, child in module.named_children() if next(child.parameters(), None) is not None]
        out += unambiguous_modules(model, children)
    return out


def apply_lora(
    model: nn.Module,
    anatomy: Anatomy,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.1,
    target_modules: list[str] | None = None,
    task_type: str | None = None,
    use_rslora: bool = False,
    use_dora: bool = False,
    trainable_token_indices: list[int] | None = None,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters.

    A new task head (``anatomy.head``: a classifier) trains in full and is saved with them; a causal LM's head
    (``task_type="CAUSAL_LM"``) is pretrained and stays frozen, as do its embeddings, except the rows of
    ``trainable_token_indices`` (tokens added to the vocabulary, see :func:`ftlib.training.decoder.add_tokens`), which
    train in the input embeddings and in the LM head (tied or not) through peft's trainable tokens.
    ``use_rslora`` / ``use_dora``: peft's rsLoRA scaling and DoRA."""
    nested = find_backbone(model)  # a detector / segmenter: adapters in its backbone, its head trained in full
    if nested is not None and task_type not in PRETRAINED_HEAD_TASKS:
        targets = backbone_targets(model, nested[0], target_modules)
    else:
        targets = target_modules or default_target_modules(model)
    extra = {}
    if use_rslora:
        extra["use_rslora"] = True
    if use_dora:
        extra["use_dora"] = True
    if trainable_token_indices:
        extra.update(_trainable_tokens(model, anatomy, list(trainable_token_indices)))
    if getattr(getattr(model, "config", None), "model_type", None) == "gpt2":
        extra["fan_in_fan_out"] = True  # its Conv1D layers store weights transposed (peft would warn and set it)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=None if task_type in PRETRAINED_HEAD_TASKS else unambiguous_modules(model, anatomy.head),
        task_type=task_type,
        **extra,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"LoRA: {err} (set --lora_target_modules to module names of this model)") from None


def _trainable_tokens(model: nn.Module, anatomy: Anatomy, token_ids: list[int]) -> dict:
    """peft's ``trainable_token_indices`` for the input embeddings and, unless tied to them, the output ones."""
    paths = {id(module): path for path, module in model.named_modules()}
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    indices = {paths[id(inputs)]: token_ids}
    if anatomy.tied:
        return {"trainable_token_indices": indices, "ensure_weight_tying": True}
    if outputs is not None:
        indices[paths[id(outputs)]] = token_ids
    return {"trainable_token_indices": indices}


# Beside an adapter: the fine-tuned model's transformers config (labels, problem type, head architecture), which the
# adapter files do not hold. Not config.json: transformers would then take the folder for a complete model and load
# the base weights from it, finding none.
TASK_CONFIG = "task_config.json"


def save_lora(model: PeftModel, output_dir: str | Path, merged: bool, state_dict: dict | None = None) -> nn.Module:
    """Save the adapter (``adapter_model.safetensors``, and :data:`TASK_CONFIG`) or the merged plain model;
    returns what was saved. ``state_dict``: ``model``'s whole state dict, gathered from every process
    (``accelerator.get_state_dict``); under FSDP or DeepSpeed ZeRO-3 each process holds only a shard of the
    weights, so the saved ones are taken from it (the merge then works on a copy: ``model`` is left as it was)."""
    if merged:
        plain = model.merge_and_unload() if state_dict is None else merged_from_state_dict(model, state_dict)
        plain.save_pretrained(output_dir)
        return plain
    model.save_pretrained(output_dir, state_dict=state_dict)  # peft picks the adapter and the head out of it
    base = model.get_base_model()
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]  # the head (save_pretrained records it so too)
    config.to_json_file(Path(output_dir) / TASK_CONFIG, use_diff=False)
    return model


def merged_from_state_dict(model: PeftModel, state_dict: dict) -> nn.Module:
    """The plain model that ``merge_and_unload`` would give, built from ``model``'s whole ``state_dict`` rather than
    from ``model``'s own parameters (shards under FSDP / ZeRO-3): a twin of ``model`` is made on the meta device
    (no memory, no initialisation), takes the state dict's tensors, and peft merges it as it would ``model``.
    ``model`` is unchanged; the merged weights are copies, the others share the state dict's tensors."""
    base = model.get_base_model()
    with torch.device("meta"):
        twin = type(base)(copy.deepcopy(base.config))
    twin = get_peft_model(twin, copy.deepcopy(model.peft_config[model.active_adapter]))
    # the merge adds into the adapted layers' weights in place: copies, where the state dict may be model's own tensors
    tensors = {key: value.clone() if ".base_layer." in key else value for key, value in state_dict.items()}
    twin.load_state_dict(tensors, strict=True, assign=True)  # strict: a missing or extra weight is an error
    device = next(iter(tensors.values())).device
    for name, buffer in list(twin.named_buffers()):  # buffers outside the state dict (position ids): model's own
        if buffer.is_meta:
            module, _, attr = name.rpartition(".")
            twin.get_submodule(module)._buffers[attr] = model.get_buffer(name).detach().to(device, copy=True)
    return twin.merge_and_unload()


def load_task_config(adapter_dir: str | Path):
    """The fine-tuned model's config saved beside an adapter (:data:`TASK_CONFIG`)."""
    from transformers import CONFIG_MAPPING

    path = Path(adapter_dir) / TASK_CONFIG
    model_type = json.loads(path.read_text(encoding="utf-8"))["model_type"]
    return CONFIG_MAPPING[model_type].from_json_file(path)
