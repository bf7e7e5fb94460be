"""Object detection models: a detector checkpoint with a head sized to the data's categories, or a fresh Conditional
DETR built on a pretrained backbone (``--backbone``), and the image processor that resizes and normalises for it."""

from __future__ import annotations

import logging

from ftlib.training.modeling import (
    checkpoint_kwargs,
    load_config_for_labels,
    load_image_processor,
    load_model,
)

logger = logging.getLogger("ftlib.detection")

HEAD_SUFFIX = "ForObjectDetection"
# A small DETR head for small data and CPUs (Conditional DETR's own: 256 wide, 6 + 6 layers, 300 queries): at most
# 28 objects an image in COCO-sized photos need far fewer queries, and a narrower transformer trains faster on 80 images.
FRESH_HEAD = {"d_model": 128, "encoder_layers": 3, "decoder_layers": 3, "encoder_attention_heads": 8,
              "decoder_attention_heads": 8, "encoder_ffn_dim": 512, "decoder_ffn_dim": 512, "num_queries": 50}


def label_maps(categories: list[dict]) -> tuple[dict[int, str], dict[str, int]]:
    id2label = {k: c["name"] for k, c in enumerate(categories)}
    return id2label, {name: k for k, name in id2label.items()}


def detector_config(model_args, checkpoint: str, categories: list[dict]):
    """The model's config: a fresh Conditional DETR on the backbone (``--backbone``), or the checkpoint's own with the
    data's labels (a head of another size refused unless ``--ignore_mismatched_sizes``)."""
    id2label, label2id = label_maps(categories)
    if getattr(model_args, "backbone", None):
        from transformers import ConditionalDetrConfig

        from ftlib.training.backbone import apply_overrides, backbone_config, head_and_backbone_overrides

        config = ConditionalDetrConfig(use_timm_backbone=False, backbone_config=backbone_config(checkpoint, model_args, 1),
                                       backbone=None, use_pretrained_backbone=False, num_labels=len(id2label),
                                       id2label=id2label, label2id=label2id, **FRESH_HEAD)
        apply_overrides(config, head_and_backbone_overrides(model_args)[0])  # e.g. {"num_queries": 20}
        return config
    return load_config_for_labels(model_args, len(id2label), id2label, None, checkpoint=checkpoint,
                                  head_suffix=HEAD_SUFFIX)


def build_detector(model_args, checkpoint: str, config):
    """The model: from the checkpoint, or (``--backbone``) built fresh with the backbone's pretrained weights loaded
    (``--backbone_init random``: left random)."""
    from transformers import AutoModelForObjectDetection

    if not getattr(model_args, "backbone", None):
        return load_model(AutoModelForObjectDetection, model_args, config, checkpoint)
    model = AutoModelForObjectDetection.from_config(config)
    if getattr(model_args, "backbone_init", "pretrained") == "pretrained":
        from ftlib.training.backbone import load_backbone_weights

        load_backbone_weights(model, checkpoint, model_args)
    return model


def detection_processor(model_args, checkpoint: str, shortest_edge: int, longest_edge: int):
    """The image processor, resizing to ``shortest_edge`` (the longer side at most ``longest_edge``): the checkpoint's,
    or for a backbone Conditional DETR's with the backbone's normalisation (mean, std) when it has a processor."""
    from transformers import ConditionalDetrImageProcessor
    from transformers.image_utils import SizeDict

    size = {"shortest_edge": shortest_edge, "longest_edge": longest_edge}
    if not getattr(model_args, "backbone", None):
        processor = load_image_processor(model_args, checkpoint)
        processor.size = SizeDict(**size)
        return processor
    kwargs = {}
    try:
        from transformers import AutoImageProcessor

        own = AutoImageProcessor.from_pretrained(checkpoint, **checkpoint_kwargs(model_args))
        kwargs = {"image_mean": list(own.image_mean), "image_std": list(own.image_std)}
    except (OSError, ValueError, AttributeError, TypeError):
        logger.info("%s has no image processor: ImageNet's mean and std", model_args.model_name_or_path)
    return ConditionalDetrImageProcessor(size=size, **kwargs)
