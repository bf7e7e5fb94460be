"""find_anatomy on tiny models of every supported architecture, peft-wrapped models, overrides and failures."""

from __future__ import annotations

import re
from typing import NamedTuple

import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)

from ftlib.strategy.anatomy import Anatomy, AnatomyError, find_anatomy

TEXT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
TEXT |= {"intermediate_size": 37, "max_position_embeddings": 64}
VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
VIT |= {"intermediate_size": 37}


def flat(prefix: str, n: int = 2) -> list[str]:
    """Block path regexes of a flat stack; ViT-style models keep theirs at ``vit.layers`` in transformers 5."""
    return [rf"{prefix}\.{i}" for i in range(n)]


class Case(NamedTuple):
    config: dict
    embeddings: tuple[str, ...]
    blocks: list[str]  # regexes, bottom -> top
    head: tuple[str, ...]
    layer_ids: dict[str, int | str]  # parameter name -> layer id; "n" = the top block


CASES = {
    "bert": Case(
        TEXT,
        ("bert.embeddings",),
        flat(r"bert\.encoder\.layer"),
        ("classifier",),
        {"bert.pooler.dense.weight": "n"},
    ),
    "roberta": Case(TEXT, ("roberta.embeddings",), flat(r"roberta\.encoder\.layer"), ("classifier",), {}),
    "xlm-roberta": Case(TEXT, ("roberta.embeddings",), flat(r"roberta\.encoder\.layer"), ("classifier",), {}),
    "distilbert": Case(
        {
            "vocab_size": 99,
            "dim": 32,
            "n_layers": 2,
            "n_heads": 2,
            "hidden_dim": 37,
            "max_position_embeddings": 64,
        },
        ("distilbert.embeddings",),
        flat(r"distilbert\.transformer\.layer"),
        ("pre_classifier", "classifier"),
        {},
    ),
    "deberta-v2": Case(
        TEXT
        | {
            "relative_attention": True,
            "position_buckets": 8,
            "pos_att_type": ["p2c", "c2p"],
            "norm_rel_ebd": "layer_norm",
            "conv_kernel_size": 3,
        },
        ("deberta.embeddings", "deberta.encoder.rel_embeddings"),
        flat(r"deberta\.encoder\.layer"),
        ("pooler", "classifier"),
        {
            "deberta.encoder.rel_embeddings.weight": 0,
            "deberta.encoder.LayerNorm.weight": "n",
            "deberta.encoder.conv.conv.weight": "n",
        },
    ),
    "electra": Case(
        TEXT | {"embedding_size": 16},
        ("electra.embeddings", "electra.embeddings_project"),
        flat(r"electra\.encoder\.layer"),
        ("classifier",),
        {"electra.embeddings_project.weight": 0},
    ),
    # 4 layers sharing 2 groups of 2 layers each: the blocks are the 2 groups, not the 4 inner layers
    "albert": Case(
        TEXT | {"embedding_size": 16, "num_hidden_layers": 4, "num_hidden_groups": 2, "inner_group_num": 2},
        ("albert.embeddings", "albert.encoder.embedding_hidden_mapping_in"),
        flat(r"albert\.encoder\.albert_layer_groups"),
        ("classifier",),
        {"albert.encoder.albert_layer_groups.1.albert_layers.1.ffn.weight": 2, "albert.pooler.weight": "n"},
    ),
    "modernbert": Case(
        TEXT
        | {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2},
        ("model.embeddings",),
        flat(r"model\.layers"),
        ("head", "classifier"),
        {"model.final_norm.weight": "n"},
    ),
    "vit": Case(
        VIT,
        ("vit.embeddings",),
        flat(r"vit\.(encoder\.layer|layers)"),
        ("classifier",),
        {"vit.layernorm.weight": "n"},
    ),
    # DeiT's auto class maps to two heads; without `architectures` transformers 5 fails to pick one
    "deit": Case(
        VIT | {"architectures": ["DeiTForImageClassification"]},
        ("deit.embeddings",),
        flat(r"deit\.(encoder\.layer|layers)"),
        ("classifier",),
        {"deit.layernorm.weight": "n"},
    ),
    # the shared position bias is registered before the first block: with the embeddings
    "beit": Case(
        VIT | {"use_shared_relative_position_bias": True},
        ("beit.embeddings", "beit.shared_position_bias"),
        flat(r"beit\.(encoder\.layer|layers)"),
        ("classifier",),
        {"beit.pooler.layernorm.weight": "n"},
    ),
    # hierarchical models: flattened to blocks in forward order; stage downsampling stays with its stage
    "swin": Case(
        {
            "image_size": 32,
            "patch_size": 4,
            "embed_dim": 16,
            "depths": [1, 2],
            "num_heads": [1, 2],
            "window_size": 4,
        },
        ("swin.embeddings",),
        [r"swin\.encoder\.layers\.0\.blocks\.0", *flat(r"swin\.encoder\.layers\.1\.blocks")],
        ("classifier",),
        {"swin.encoder.layers.0.downsample.reduction.weight": 1, "swin.layernorm.weight": "n"},
    ),
    "convnext": Case(
        {"image_size": 32, "depths": [1, 2], "hidden_sizes": [8, 16], "num_stages": 2},
        ("convnext.embeddings",),
        [r"convnext\.encoder\.stages\.0\.layers\.0", *flat(r"convnext\.encoder\.stages\.1\.layers")],
        ("classifier",),
        {"convnext.encoder.stages.1.downsampling_layer.1.weight": 2, "convnext.layernorm.weight": "n"},
    ),
    "resnet": Case(
        {"depths": [1, 2], "hidden_sizes": [8, 16], "embedding_size": 8, "layer_type": "basic"},
        ("resnet.embedder",),
        [r"resnet\.encoder\.stages\.0\.layers\.0", *flat(r"resnet\.encoder\.stages\.1\.layers")],
        ("classifier",),
        {"resnet.encoder.stages.1.layers.0.shortcut.convolution.weight": 2},
    ),
    "efficientnet": Case(
        {
            "image_size": 32,
            "width_coefficient": 0.1,
            "depth_coefficient": 1.0,
            "kernel_sizes": [3, 3],
            "in_channels": [32, 16],
            "out_channels": [16, 24],
            "depthwise_padding": [],
            "strides": [1, 2],
            "num_block_repeats": [1, 2],
            "expand_ratios": [1, 6],
            "hidden_dim": 128,
        },
        ("efficientnet.embeddings",),
        flat(r"efficientnet\.encoder\.blocks", 3),
        ("classifier",),
        {"efficientnet.encoder.top_conv.weight": "n", "efficientnet.encoder.top_bn.weight": "n"},
    ),
}
VISION = {"vit", "deit", "beit", "swin", "convnext", "resnet", "efficientnet"}


def tiny_model(model_type: str) -> PreTrainedModel:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, num_labels=3, **CASES[model_type].config)
    auto = AutoModelForImageClassification if model_type in VISION else AutoModelForSequenceClassification
    return auto.from_config(config).eval()


def forward_order(model: nn.Module, blocks: tuple[str, ...], vision: bool) -> list[int]:
    """Indices of the blocks in the order a forward pass first enters them."""
    order: list[int] = []
    hooks = [
        model.get_submodule(path).register_forward_pre_hook(
            lambda *_, i=i: order.append(i) if i not in order else None
        )
        for i, path in enumerate(blocks)
    ]
    inputs = (
        {"pixel_values": torch.randn(1, 3, 32, 32)} if vision else {"input_ids": torch.randint(3, 99, (1, 8))}
    )
    with torch.no_grad():
        model(**inputs)
    for hook in hooks:
        hook.remove()
    return order


def all_layer_ids(model: nn.Module, anatomy: Anatomy) -> dict[str, int]:
    return {name: anatomy.layer_id(name) for name, _ in model.named_parameters(remove_duplicate=False)}


@pytest.mark.parametrize("model_type", list(CASES))
def test_architecture_anatomy(model_type):
    case = CASES[model_type]
    model = tiny_model(model_type)
    anatomy = find_anatomy(model)
    n = len(case.blocks)

    assert anatomy.num_blocks == n
    for pattern, path in zip(case.blocks, anatomy.blocks):
        assert re.fullmatch(pattern, path), (pattern, path)
    assert forward_order(model, anatomy.blocks, model_type in VISION) == list(range(n))  # bottom -> top
    assert anatomy.embeddings == case.embeddings
    assert anatomy.head == case.head
    assert anatomy.group_names() == ["embeddings", *(f"block {i}" for i in range(n)), "head"]

    ids = all_layer_ids(model, anatomy)
    assert set(ids.values()) == set(range(n + 2))  # every layer id holds parameters, none out of range
    for name, layer in ids.items():
        if name.split(".")[0] in case.head:
            assert layer == n + 1, name
        elif any(name.startswith(p + ".") for p in anatomy.embeddings):
            assert layer == 0, name
        for i, block in enumerate(anatomy.blocks):
            if name.startswith(block + "."):
                assert layer == i + 1, name
    for name, expected in case.layer_ids.items():
        assert ids[name] == (n if expected == "n" else expected), name


def test_albert_notes_explain_shared_groups():
    anatomy = find_anatomy(tiny_model("albert"))
    assert "shares weights" in anatomy.notes and "4 layers reuse 2 layer group(s)" in anatomy.notes


def test_peft_wrapped_bert_gives_the_same_layer_ids():
    peft = pytest.importorskip("peft")
    model = tiny_model("bert")
    plain = find_anatomy(model)
    plain_ids = all_layer_ids(model, plain)
    config = peft.LoraConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"])
    wrapped = peft.get_peft_model(model, config)

    anatomy = find_anatomy(wrapped)
    assert anatomy == plain  # paths relative to the unwrapped model
    names = [name for name, _ in wrapped.named_parameters(remove_duplicate=False)]
    assert all(name.startswith("base_model.model.") for name in names)
    for name in names:
        layer = anatomy.layer_id(name)
        assert layer == plain.layer_id(name)
        if "lora_" in name:
            block = int(re.search(r"encoder\.layer\.(\d+)\.", name).group(1))
            assert layer == block + 1, name
        elif "modules_to_save" in name or "original_module" in name:
            assert layer == plain.num_blocks + 1, name
        else:  # the base weights keep the id they had before wrapping
            original = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert layer == plain_ids[original], name
    lora_blocks = {anatomy.layer_id(n) for n in names if "lora_A" in n}
    assert lora_blocks == {1, 2}
    assert any("classifier.modules_to_save.default.weight" in n for n in names)


def test_bare_backbone_has_no_head():
    model = AutoModel.from_config(AutoConfig.for_model("bert", **TEXT))
    anatomy = find_anatomy(model)
    assert anatomy.blocks == ("encoder.layer.0", "encoder.layer.1")
    assert anatomy.embeddings == ("embeddings",)
    assert anatomy.head == ()
    assert "bare backbone" in anatomy.notes
    ids = all_layer_ids(model, anatomy)
    assert ids["pooler.dense.weight"] == 2 and set(ids.values()) == {0, 1, 2}


# --- models the discovery cannot handle ------------------------------------------------------------------


class TinyConfig(PreTrainedConfig):
    model_type = "tiny-anatomy"


class Body(nn.Module):
    """No repeated stack: one mixed-type list."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.mixed = nn.ModuleList([nn.Linear(8, 8), nn.LayerNorm(8)])
        self.out = nn.Linear(8, 8)


class TinyForSequenceClassification(PreTrainedModel):
    config_class = TinyConfig
    base_model_prefix = "body"

    def __init__(self, config, attr: str = "body"):
        super().__init__(config)
        setattr(self, attr, Body())
        self.classifier = nn.Linear(8, 3)
        self.post_init()


class Custom(nn.Module):
    """A plain module with blocks as separate attributes, not in a list."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.layer_a = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.layer_b = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.norm = nn.LayerNorm(8)


@pytest.mark.parametrize(
    "make_model, names",
    [
        (
            lambda: TinyForSequenceClassification(TinyConfig()),
            [
                "TinyForSequenceClassification",
                "body (Body)",
                "classifier (Linear)",
                "'body.mixed' (2 x LayerNorm/Linear)",
            ],
        ),
        (Custom, ["Custom", "stem (Linear)", "layer_a (Sequential)", "'layer_a' (2 x Linear/ReLU)"]),
    ],
    ids=["pretrained-model", "plain-module"],
)
def test_no_repeated_stack_fails_clearly(make_model, names):
    with pytest.raises(AnatomyError) as err:
        find_anatomy(make_model())
    message = str(err.value)
    for name in [*names, "Top-level children", "Candidate lists", "--blocks_pattern"]:
        assert name in message, name


def test_missing_backbone_attribute_fails_clearly():
    with pytest.raises(AnatomyError, match=r"base_model_prefix='body' but no child 'body'.*encoder \(Body\)"):
        find_anatomy(TinyForSequenceClassification(TinyConfig(), attr="encoder"))


def test_two_towers_of_blocks_fail_asking_for_a_pattern():
    model = nn.Module()
    model.text = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
    model.vision = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
    with pytest.raises(AnatomyError, match=r"several stacks.*'text', 'vision'.*--blocks_pattern"):
        find_anatomy(model)


# --- blocks_pattern ------------------------------------------------------------------------------------------


def test_blocks_pattern_on_a_custom_module():
    model = Custom()
    anatomy = find_anatomy(model, blocks_pattern=r"layer_[ab]")
    assert anatomy.blocks == ("layer_a", "layer_b")
    assert anatomy.embeddings == ("stem",)
    assert anatomy.head == ()
    assert all_layer_ids(model, anatomy) == {
        "stem.weight": 0,
        "stem.bias": 0,
        "layer_a.0.weight": 1,
        "layer_a.0.bias": 1,
        "layer_b.0.weight": 2,
        "layer_b.0.bias": 2,
        "norm.weight": 2,
        "norm.bias": 2,
    }


def test_blocks_pattern_overrides_discovery_and_keeps_outer_matches():
    model = tiny_model("bert")
    # also matches each layer's attention: those nested matches are dropped
    anatomy = find_anatomy(model, blocks_pattern=r"bert\.encoder\.layer\.\d+(\.attention)?")
    assert anatomy == find_anatomy(model)
    coarse = find_anatomy(model, blocks_pattern=r"bert\.encoder")  # one block: the whole encoder
    assert coarse.blocks == ("bert.encoder",)
    assert coarse.layer_id("bert.encoder.layer.1.output.dense.weight") == 1
    assert coarse.layer_id("bert.pooler.dense.weight") == 1
    assert coarse.layer_id("classifier.weight") == 2


def test_blocks_pattern_matching_nothing_names_pattern_and_candidates():
    with pytest.raises(AnatomyError) as err:
        find_anatomy(tiny_model("bert"), blocks_pattern=r"encoder\.layers\.\d+")
    message = str(err.value)
    assert r"'encoder\\.layers\\.\\d+'" in message  # the pattern, as repr shows it
    assert "'bert.encoder.layer.0'" in message and "'bert.embeddings'" in message


def test_blocks_pattern_that_is_no_regex_fails():
    with pytest.raises(AnatomyError, match=r"blocks_pattern 'layer\[' is not a valid regex"):
        find_anatomy(Custom(), blocks_pattern="layer[")


def test_blocks_pattern_outside_backbone_fails():
    with pytest.raises(AnatomyError, match="outside the backbone 'bert'.*'classifier'"):
        find_anatomy(tiny_model("bert"), blocks_pattern="classifier")


def test_layer_id_matches_whole_path_components():
    anatomy = Anatomy(embeddings=("emb",), blocks=("blocks.0", "blocks.1"), head=("head",))
    assert [anatomy.layer_id(n) for n in ("emb.w", "blocks.0.w", "blocks.1.w", "head.w")] == [0, 1, 2, 3]
    assert anatomy.layer_id("base_model.model.blocks.1.lora_A.default.weight") == 2
    with pytest.raises(AnatomyError, match="'blocks.10.w'"):  # not block 1: prefixes end at a dot
        anatomy.layer_id("blocks.10.w")
