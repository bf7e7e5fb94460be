"""Text tokenisation: batched fast tokenizer, no padding here (the collator pads each batch to its own
longest row), a ``length`` column for length-grouped batches, and head+tail truncation for long texts."""

from __future__ import annotations

import logging

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def effective_max_length(tokenizer: PreTrainedTokenizerBase, config, requested: int | None) -> int:
    """``requested`` capped at what the model can take (tokenizer limit and position embeddings)."""
    limits = [tokenizer.model_max_length]
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        # RoBERTa-style models reserve padding_idx + 1 positions
        offset = (getattr(config, "pad_token_id", 0) or 0) + 1 if config.model_type in ("roberta", "xlm-roberta") else 0
        limits.append(positions - offset)
    cap = min(v for v in limits if v and v < 1_000_000) if any(v and v < 1_000_000 for v in limits) else 512
    if requested is None:
        return cap
    if requested > cap:
        logger.warning("max_seq_length %d exceeds the model's limit; using %d", requested, cap)
    return min(requested, cap)


def _special_layout(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after a single sequence ([CLS] / [SEP], <s> / </s>)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise ValueError(f"cannot locate the text among {type(tokenizer).__name__}'s special tokens")


def tokenize_text(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    text_column: str,
    text_pair_column: str | None,
    max_length: int,
    truncation: str = "head",
    head_fraction: float = 0.25,
    num_proc: int | None = None,
    keep: tuple[str, ...] = ("labels",),
) -> Dataset:
    """Tokenise in batches; keeps only model inputs, ``length`` and the ``keep`` columns.

    ``truncation="head"`` keeps the first tokens; ``"head_tail"`` keeps the first ``head_fraction`` of
    the budget and the last tokens of long single texts (Sun et al. 2019: both ends carry the gist).
    """
    if truncation not in ("head", "head_tail"):
        raise ValueError(f"--truncation must be 'head' or 'head_tail', got {truncation!r}")
    if truncation == "head_tail" and text_pair_column:
        raise ValueError("--truncation head_tail applies to single texts, not sentence pairs")
    prefix, suffix = _special_layout(tokenizer) if truncation == "head_tail" else ([], [])
    budget = max_length - len(prefix) - len(suffix)
    head = int(budget * head_fraction)

    def to_str(values):
        return ["" if v is None else str(v) for v in values]

    def encode(batch):
        texts = to_str(batch[text_column])
        if truncation == "head_tail":
            ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
            ids = [prefix + (t if len(t) <= budget else t[:head] + t[len(t) - (budget - head):]) + suffix for t in ids]
            out = {"input_ids": ids, "attention_mask": [[1] * len(t) for t in ids]}
            if "token_type_ids" in tokenizer.model_input_names:
                out["token_type_ids"] = [[0] * len(t) for t in ids]
        else:
            pairs = to_str(batch[text_pair_column]) if text_pair_column else None
            out = dict(tokenizer(texts, pairs, truncation=True, max_length=max_length))
        out["length"] = [len(t) for t in out["input_ids"]]
        return out

    drop = [c for c in dataset.column_names if c not in keep]
    return dataset.map(encode, batched=True, num_proc=num_proc, remove_columns=drop, desc="tokenizing")
