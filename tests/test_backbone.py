"""A pretrained backbone under a fresh detection / segmentation head: its config, its weights, its anatomy, LoRA
inside it only, --freeze_backbone (tiny random configs: DINOv2, ResNet, ConvNeXt under Conditional DETR / UperNet)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForObjectDetection,
    AutoModelForSemanticSegmentation,
    ConditionalDetrConfig,
    ConvNextConfig,
    ConvNextModel,
    Dinov2Config,
    Dinov2Model,
    ResNetConfig,
    ResNetModel,
    UperNetConfig,
)

from ftlib.strategy.anatomy import find_anatomy, find_backbone
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.lora import apply_lora, save_lora, unambiguous_modules
from ftlib.training.arguments import VisionModelArguments
from ftlib.training.backbone import backbone_config, is_backbone_only, load_backbone_weights
from ftlib.training.trainer import prepare_model

TINY_DINOV2 = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64,
               "patch_size": 8, "image_size": 64}


@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(Dinov2Config(**TINY_DINOV2)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("resnet")
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1])).save_pretrained(folder)
    return str(folder)


def model_args(name: str, **extra) -> VisionModelArguments:
    return VisionModelArguments(backbone=name, **extra)


def detector(backbone_dir: str, num_stages: int = 1):
    config = ConditionalDetrConfig(
        use_timm_backbone=False, backbone=None, use_pretrained_backbone=False,
        backbone_config=backbone_config(backbone_dir, model_args(backbone_dir), num_stages), num_labels=2,
        d_model=16, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32, num_queries=5,
        encoder_attention_heads=2, decoder_attention_heads=2)
    return AutoModelForObjectDetection.from_config(config)


def segmenter(backbone_dir: str):
    config = UperNetConfig(backbone_config=backbone_config(backbone_dir, model_args(backbone_dir), 4), num_labels=3,
                           hidden_size=16, use_auxiliary_head=False)
    return AutoModelForSemanticSegmentation.from_config(config)


def test_backbone_config_takes_evenly_spaced_top_stages(dinov2_dir, resnet_dir):
    vit = backbone_config(dinov2_dir, model_args(dinov2_dir), 2)
    assert vit.out_features == ["stage2", "stage4"] and vit.reshape_hidden_states
    assert backbone_config(dinov2_dir, model_args(dinov2_dir), 1).out_features == ["stage4"]
    assert backbone_config(resnet_dir, model_args(resnet_dir), 4).out_features == ["stage1", "stage2", "stage3", "stage4"]
    with pytest.raises(ValueError, match="5 feature stages asked of a backbone with 4"):
        backbone_config(resnet_dir, model_args(resnet_dir), 5)


def test_backbone_config_refuses_a_model_without_backbone_class(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no Backbone class for its model type 'bert'.*dinov2"):
        backbone_config(str(tmp_path), model_args(str(tmp_path)))


def test_pretrained_weights_load_into_the_detectors_backbone(dinov2_dir):
    model = detector(dinov2_dir)
    path, module = find_backbone(model)
    assert path == "model.backbone.model"
    pretrained = Dinov2Model.from_pretrained(dinov2_dir)
    assert not torch.equal(module.embeddings.patch_embeddings.projection.weight,
                           pretrained.embeddings.patch_embeddings.projection.weight)
    load_backbone_weights(model, dinov2_dir, model_args(dinov2_dir))
    for name, tensor in pretrained.state_dict().items():
        assert torch.equal(module.state_dict()[name], tensor), name
    # the backbone's features are the pretrained encoder's (its final layer norm applied)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = module(pixels).feature_maps[-1]
        theirs = pretrained(pixels).last_hidden_state[:, 1:]
    assert torch.allclose(ours.flatten(2).transpose(1, 2), theirs, atol=1e-5)


def test_resnet_weights_load_into_uppernet_with_batch_norm(resnet_dir):
    model = segmenter(resnet_dir)
    load_backbone_weights(model, resnet_dir, model_args(resnet_dir))
    pretrained = ResNetModel.from_pretrained(resnet_dir)
    assert torch.equal(model.backbone.embedder.embedder.convolution.weight,
                       pretrained.embedder.embedder.convolution.weight)
    assert is_backbone_only(pretrained.config) and not is_backbone_only(model.config)


def test_anatomy_of_a_detector_is_its_backbone_under_the_detection_transformer(dinov2_dir):
    anatomy = find_anatomy(detector(dinov2_dir))
    assert anatomy.blocks == tuple(f"model.backbone.model.encoder.layer.{i}" for i in range(4))
    assert anatomy.embeddings == ("model.backbone.model.embeddings",)
    assert set(anatomy.head) == {"class_labels_classifier", "bbox_predictor", "model.query_position_embeddings",
                                 "model.input_projection", "model.encoder", "model.decoder"}
    assert anatomy.layer_id("model.decoder.layers.0.fc1.weight") == 5  # the head
    assert anatomy.layer_id("model.backbone.model.layernorm.weight") == 4  # the top block


def test_anatomy_of_a_convnext_segmenter_is_per_block(tmp_path):
    ConvNextModel(ConvNextConfig(hidden_sizes=[8, 8, 16, 16], depths=[1, 2, 1, 1])).save_pretrained(tmp_path)
    anatomy = find_anatomy(segmenter(str(tmp_path)))
    assert anatomy.num_blocks == 5 and anatomy.blocks[0] == "backbone.encoder.stages.0.layers.0"
    assert anatomy.head == ("decode_head",)


def test_freeze_backbone_trains_the_head_only(dinov2_dir):
    model, anatomy = prepare_model(detector(dinov2_dir), FineTuneArguments(freeze_backbone=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(anatomy.layer_id(n) == anatomy.num_blocks + 1 for n in trainable)
    assert not any(n.startswith("model.backbone") for n in trainable)
    assert any(n.startswith("model.decoder") for n in trainable)


def test_peft_module_names_are_made_unambiguous(dinov2_dir):
    model = detector(dinov2_dir)
    # peft matches modules_to_save by suffix: "model.encoder" would take the backbone's "model.backbone.model.encoder"
    names = unambiguous_modules(model, find_anatomy(model).head)
    assert "model.encoder" not in names and "model.encoder.layers.0" in names and "model.decoder" in names
    every = [n for n, _ in model.named_modules()]
    for name in names:
        assert [n for n in every if n.endswith(name)] == [name]


def test_lora_adapts_the_backbone_only_and_saves_the_head(dinov2_dir, tmp_path):
    torch.manual_seed(0)
    model = detector(dinov2_dir)
    anatomy = find_anatomy(model)
    peft_model = apply_lora(model, anatomy, r=4, alpha=8)
    lora = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert lora and all(".backbone.model.encoder.layer." in n for n in lora)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("decoder" in n and "modules_to_save" in n for n in trainable)  # the head trains in full
    assert not any("backbone" in n and "modules_to_save" in n for n in trainable)
    with torch.no_grad():  # move every trainable tensor, so the reload has something to get right
        for name, param in peft_model.named_parameters():
            if param.requires_grad:
                param.add_(0.01 * torch.randn_like(param))
    peft_model.eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = peft_model(pixel_values=pixels)
    save_lora(peft_model, tmp_path / "adapter", merged=False)
    from peft import PeftModel

    torch.manual_seed(1)
    base = detector(dinov2_dir)
    load_backbone_weights(base, dinov2_dir, model_args(dinov2_dir))
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        after = reloaded(pixel_values=pixels)
    assert torch.allclose(before.logits, after.logits, atol=1e-5)
    assert torch.allclose(before.pred_boxes, after.pred_boxes, atol=1e-5)


def test_vision_model_arguments():
    assert VisionModelArguments(backbone="dinov2-small").model_name_or_path == "dinov2-small"
    with pytest.raises(ValueError, match="give one"):
        VisionModelArguments(model_name_or_path="a", backbone="b")
    with pytest.raises(ValueError, match="--backbone_init needs --backbone"):
        VisionModelArguments(model_name_or_path="a", backbone_init="random")
    with pytest.raises(ValueError, match="--model_name_or_path is required"):
        VisionModelArguments()


def test_frozen_batch_norm_keeps_the_backbones_statistics_and_trains_the_heads(resnet_dir):
    model = segmenter(resnet_dir)
    model, _ = prepare_model(model, FineTuneArguments(batch_norm="frozen"))
    model.train()
    model(pixel_values=torch.randn(2, 3, 64, 64), labels=torch.randint(0, 3, (2, 64, 64)))
    backbone_bn = model.backbone.embedder.embedder.normalization
    head_bn = next(m for n, m in model.decode_head.named_modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not backbone_bn.training and int(backbone_bn.num_batches_tracked) == 0  # pretrained statistics kept
    assert head_bn.training and int(head_bn.num_batches_tracked) == 1  # a fresh head's statistics learn


def test_config_overrides_reach_the_head_and_under_backbone_config_the_backbone(dinov2_dir):
    from ftlib.tasks.object_detection_model import detector_config

    args = model_args(dinov2_dir, config_overrides='{"num_queries": 7, "backbone_config": {"drop_path_rate": 0.1}}')
    config = detector_config(args, dinov2_dir, [{"id": 1, "name": "person"}])
    assert config.num_queries == 7 and config.backbone_config.drop_path_rate == 0.1
    with pytest.raises(ValueError, match="ConditionalDetrConfig has no attribute 'num_querys'"):
        detector_config(model_args(dinov2_dir, config_overrides='{"num_querys": 7}'), dinov2_dir, [{"id": 1, "name": "a"}])
    with pytest.raises(ValueError, match="Dinov2Config has no attribute 'depth'"):
        backbone_config(dinov2_dir, model_args(dinov2_dir, config_overrides='{"backbone_config": {"depth": 2}}'))
