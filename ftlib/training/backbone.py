"""A pretrained backbone under a fresh detection or segmentation head: the backbone checkpoint's config as a
transformers backbone config, and its weights into the model built on it.

transformers builds detectors (DETR, Conditional DETR) and segmenters (UperNet) around any model it has a
Backbone class for (``AutoBackbone``: DINOv2, ViTDet, ResNet, ConvNeXt, Swin ...); the config only describes the
backbone, so its pretrained weights are loaded here, once the model is built, into that backbone module.
"""

from __future__ import annotations

import logging

from ftlib.strategy.anatomy import find_backbone
from ftlib.training.modeling import checkpoint_kwargs

logger = logging.getLogger(__name__)

# Task heads transformers builds on a backbone: a checkpoint of one of these is already a detector / segmenter.
_TASK_ARCHITECTURE = ("ForObjectDetection", "ForSemanticSegmentation", "ForUniversalSegmentation",
                      "ForInstanceSegmentation")


def is_backbone_only(config) -> bool:
    """Whether a checkpoint's config is a plain backbone / encoder (DINOv2, ResNet ...), not a detector or segmenter."""
    architectures = config.architectures or []
    return not any(a.endswith(_TASK_ARCHITECTURE) for a in architectures) and getattr(config, "backbone_config", None) is None


def backbone_config(checkpoint: str, model_args, num_stages: int = 1):
    """The checkpoint's config as a backbone config: ``out_features`` = the top ``num_stages`` stages, evenly spaced
    (a 12-block ViT with 4: stages 3, 6, 9, 12; a 4-stage ResNet: all four); a ViT's hidden states reshaped into
    feature maps. A model transformers has no Backbone class for is an error naming the ones it has."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_BACKBONE_MAPPING_NAMES

    config = AutoConfig.from_pretrained(checkpoint, **checkpoint_kwargs(model_args))
    if config.model_type not in MODEL_FOR_BACKBONE_MAPPING_NAMES:
        raise ValueError(
            f"--backbone {model_args.model_name_or_path}: transformers has no Backbone class for its model type "
            f"{config.model_type!r}; backbones it has: {', '.join(sorted(MODEL_FOR_BACKBONE_MAPPING_NAMES))}"
        )
    stages = [name for name in config.stage_names if name != "stem"]
    if not 1 <= num_stages <= len(stages):
        raise ValueError(f"{num_stages} feature stages asked of a backbone with {len(stages)}")
    step = len(stages) / num_stages
    config.out_features = [stages[round(len(stages) - 1 - i * step)] for i in reversed(range(num_stages))]
    if hasattr(config, "reshape_hidden_states"):
        config.reshape_hidden_states = True  # ViTs: tokens -> (batch, hidden, height / patch, width / patch)
    apply_overrides(config, head_and_backbone_overrides(model_args)[1])
    return config


def head_and_backbone_overrides(model_args) -> tuple[dict, dict]:
    """``--config_overrides`` of a model built on a backbone, split: the keys of the model's own config (the head's:
    Conditional DETR's ``num_queries``, UperNet's ``hidden_size``) and, under ``backbone_config``, the backbone's
    (``{"backbone_config": {"drop_path_rate": 0.1}}``)."""
    updates = dict(model_args.config_updates)
    backbone = updates.pop("backbone_config", {})
    if not isinstance(backbone, dict):
        raise ValueError(  # noqa: TRY004 - a bad flag value, reported with the other argument errors
            f"--config_overrides: backbone_config must be a mapping of the backbone's settings, got {backbone!r}")
    return updates, backbone


def apply_overrides(config, updates: dict) -> None:
    """Set each key on ``config``; a name it does not have is an error (a typo would otherwise do nothing)."""
    for key, value in updates.items():
        if not hasattr(config, key):
            raise ValueError(f"--config_overrides: {type(config).__name__} has no attribute '{key}'")
        setattr(config, key, value)


def load_backbone_weights(model, checkpoint: str, model_args) -> None:
    """The backbone checkpoint's pretrained weights into the model's backbone module (``find_backbone``); every
    weight of that module must come from the checkpoint (batch-norm step counters excepted)."""
    found = find_backbone(model)
    if found is None:
        raise ValueError(f"{type(model).__name__} holds no single transformers Backbone module to load "
                         f"{model_args.model_name_or_path} into")
    path, module = found
    # The module's own class, not AutoBackbone: transformers 5.25's AutoBackbone.from_pretrained asks the Hub whether
    # the name exists before anything else, so a local folder fails offline.
    pretrained = type(module).from_pretrained(checkpoint, config=module.config, **checkpoint_kwargs(model_args))
    weights = pretrained.state_dict()
    own = module.state_dict()
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"--backbone {model_args.model_name_or_path}: the checkpoint has no weights for {len(missing)} "
                         f"tensors of {path} ({', '.join(missing[:5])} ...)")
    mismatched = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if mismatched:
        raise ValueError(f"--backbone {model_args.model_name_or_path}: shapes differ for {', '.join(mismatched[:5])}")
    module.load_state_dict({k: weights[k] for k in own if k in weights}, strict=False)
    logger.info("backbone %s: %d pretrained tensors from %s", path, len(own) - len(missing), model_args.model_name_or_path)
