"""Which checkpoint a run starts from (every recipe parses these with its own data arguments)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "Hub model id or local checkpoint directory."})
    revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the Hub checkpoint."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where downloaded checkpoints are stored."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run modelling code shipped inside the checkpoint. Off by default: it executes code from the Hub."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "Replace a checkpoint head whose size disagrees with the labels (off: such a mismatch is an error)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'JSON object (a mapping in YAML) of model config attributes to change before loading, e.g. '
                          '\'{"drop_path_rate": 0.1}\'; a name the config does not have is an error.'},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "A GGUF file (llama.cpp) to start from: --model_name_or_path is then the folder holding it "
                          "(or the file itself). Dequantized to float32 and converted once into a transformers folder "
                          "in ftlib's cache (needs the gguf package). A .gguf path as --model_name_or_path works too."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel, passed to from_pretrained: 'eager', 'sdpa', 'flash_attention_2', ... "
                          "(default: transformers' choice)."},
    )

    def __post_init__(self) -> None:
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is required")
        if self.gguf_file is not None and not self.gguf_file:
            raise ValueError("--gguf_file is empty")
        self.config_updates  # noqa: B018 - parse now, so a bad value fails with the other argument errors

    @property
    def config_updates(self) -> dict:
        """``--config_overrides`` as a dict."""
        if not self.config_overrides:
            return {}
        try:
            updates = json.loads(self.config_overrides)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config_overrides is not valid JSON: {err}") from None
        if not isinstance(updates, dict):
            raise ValueError(f"--config_overrides must be a JSON object, got {self.config_overrides!r}")  # noqa: TRY004
        return updates


@dataclass
class CausalLMModelArguments(ModelArguments):
    """The model arguments of causal language models: those of every recipe, and 4-bit loading (QLoRA)."""

    new_tokens: list[str] | None = field(
        default=None,
        metadata={"help": "Tokens to add to the vocabulary as special tokens (a new chat template's markers, e.g. "
                          "<|im_start|> <|im_end|>): the embeddings grow and the new rows train (with LoRA through "
                          "peft's trainable tokens); refused where the embeddings stay frozen. Tokens it has: no-op."},
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the base model in 4 bits (bitsandbytes NF4, double quantization, bf16 compute) "
                          "and train LoRA adapters on it. CUDA only; needs --lora and bitsandbytes."},
    )


@dataclass
class VisionModelArguments(ModelArguments):
    """Detection and segmentation: a checkpoint that already is a detector / segmenter, or a backbone to build a fresh
    one on (``--backbone``)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub model id or local checkpoint directory of a detector / segmenter (or of a backbone, as "
                          "--backbone); not needed with --backbone."},
    )
    backbone: str | None = field(
        default=None,
        metadata={"help": "A backbone checkpoint (Hub id, folder, or short name: dinov2-small, efficientnet-lite0 ...) to "
                          "build a fresh detector / segmenter on: its pretrained weights load into the backbone, the head "
                          "starts from random. Any model transformers has a Backbone class for (DINOv2, ViTDet, ResNet, "
                          "ConvNeXt, Swin ...)."},
    )
    backbone_init: str = field(
        default="pretrained",
        metadata={"help": "With --backbone: 'pretrained' (its weights) or 'random' (its architecture, initialised from "
                          "scratch: the baseline that shows what pretraining gives).", "choices": ["pretrained", "random"]},
    )

    def __post_init__(self) -> None:
        if self.backbone is not None:
            if not self.backbone:
                raise ValueError("--backbone is empty")
            if self.model_name_or_path and self.model_name_or_path != self.backbone:
                raise ValueError(f"--model_name_or_path {self.model_name_or_path} and --backbone {self.backbone}: give one "
                                 "(a detector / segmenter checkpoint, or a backbone to build one on)")
            self.model_name_or_path = self.backbone  # short names, conversion and the card's name work on it
        elif self.backbone_init != "pretrained":
            raise ValueError("--backbone_init needs --backbone (it says how the backbone of a new model starts)")
        super().__post_init__()
