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
