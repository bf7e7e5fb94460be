"""LoRA through peft: a config per architecture family, the task head trained and saved, adapter or merged saves."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from ftlib.anatomy import Anatomy

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
}


def default_target_modules(model: nn.Module) -> list[str] | str:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return DEFAULT_TARGET_MODULES.get(model_type, "all-linear")


def apply_lora(
    model: nn.Module,
    anatomy: Anatomy,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.1,
    target_modules: list[str] | None = None,
    task_type: str | None = None,
) -> PeftModel:
    """Wrap ``model`` with LoRA adapters; the task head (``anatomy.head``) trains in full and is saved with them."""
    targets = target_modules or default_target_modules(model)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        modules_to_save=list(anatomy.head),
        task_type=task_type,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as err:
        raise ValueError(f"LoRA: {err} (set --lora_target_modules to module names of this model)") from None


# Beside an adapter: the fine-tuned model's transformers config (labels, problem type, head architecture), which the
# adapter files do not hold. Not config.json: transformers would then take the folder for a complete model and load
# the base weights from it, finding none.
TASK_CONFIG = "task_config.json"


def save_lora(model: PeftModel, output_dir: str | Path, merged: bool) -> nn.Module:
    """Save the adapter (``adapter_model.safetensors``, and :data:`TASK_CONFIG`) or the merged plain model;
    returns what was saved."""
    if merged:
        plain = model.merge_and_unload()
        plain.save_pretrained(output_dir)
        return plain
    model.save_pretrained(output_dir)
    base = model.get_base_model()
    config = copy.deepcopy(base.config)
    config.architectures = [type(base).__name__]  # the head (save_pretrained records it so too)
    config.to_json_file(Path(output_dir) / TASK_CONFIG, use_diff=False)
    return model


def load_task_config(adapter_dir: str | Path):
    """The fine-tuned model's config saved beside an adapter (:data:`TASK_CONFIG`)."""
    from transformers import CONFIG_MAPPING

    path = Path(adapter_dir) / TASK_CONFIG
    model_type = json.loads(path.read_text(encoding="utf-8"))["model_type"]
    return CONFIG_MAPPING[model_type].from_json_file(path)
