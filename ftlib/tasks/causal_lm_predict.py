"""Generate answers with a causal LM for a file of prompts, streaming them to a jsonl file: the library functions
behind a notebook's ``predict_jsonl(model_dir, "prompts.jsonl", "answers.jsonl")``; from the command line,
``ftlib-predict`` (which renders prompts as the run did, :mod:`ftlib.tasks.causal_lm`).

The input is JSON lines, each row ``{"prompt": "..."}`` (a rendered prompt, used as it is; ``chat=True``: taken
as one user turn of a chat) or ``{"messages": [{"role": ..., "content": ...}, ...]}`` (rendered with the
tokenizer's chat template and the assistant's generation prompt), or a csv file with a ``prompt`` column. An
``id`` field is carried to the output; without one a row's id is its number (0 for the first row).

The model is a merged (or fully fine-tuned) model folder, or a LoRA adapter folder (``adapter_config.json``): its
base model is the one named in the adapter's config, or ``base_model``. Each output row is ``{"id": ...,
"generated": ...}`` in input order, written and flushed batch by batch to ``.<name>.partial`` beside the output and
renamed to the output name when every row is done. Every input row is checked before the model loads: a bad row
stops the run with its file and line.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ftlib.tasks.causal_lm_generate import Prompt, generate_answers

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"


class PromptFileError(ValueError):
    """A prompt file that cannot be read: the message names the file, the line and what is wrong."""


# -- the input ----------------------------------------------------------------------------------------------------
def _row_prompt(row: Any, where: str, prompt_key: str, messages_key: str) -> Prompt:
    """The prompt of one row, checked: a non-empty string, or a list of role/content turns."""
    if not isinstance(row, dict):
        raise PromptFileError(f"{where}: a row must be a JSON object, found {type(row).__name__}")
    if messages_key in row and row[messages_key] is not None:
        messages = row[messages_key]
        if not isinstance(messages, list) or not messages:
            raise PromptFileError(f"{where}: '{messages_key}' must be a non-empty list of turns")
        for n, turn in enumerate(messages):
            if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or "content" not in turn:
                raise PromptFileError(f"{where}: turn {n} of '{messages_key}' needs a 'role' and a 'content'")
        return messages
    prompt = row.get(prompt_key)
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if prompt_key in row:
        raise PromptFileError(f"{where}: '{prompt_key}' is empty or not a string: {prompt!r}")
    raise PromptFileError(
        f"{where}: a row needs a '{prompt_key}' string or a '{messages_key}' list; it has {sorted(row)}"
    )


def read_prompts(
    path: str | Path, *, prompt_key: str = "prompt", messages_key: str = "messages", id_key: str = "id"
) -> list[tuple[Any, Prompt]]:
    """``(id, prompt)`` for every row of a jsonl file (``prompt`` or ``messages`` rows) or a csv file (a ``prompt``
    column), in order, every row checked. The id is the row's ``id`` field, else its number from 0."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file not found: {path}")
    rows: list[tuple[Any, Prompt]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if prompt_key not in (reader.fieldnames or []):
                raise PromptFileError(f"{path}: no '{prompt_key}' column (columns: {reader.fieldnames})")
            for number, row in enumerate(reader):
                where = f"{path} row {number + 1}"
                rows.append((row.get(id_key) or number, _row_prompt({prompt_key: row[prompt_key]}, where,
                                                                     prompt_key, messages_key)))
    else:
        with path.open(encoding="utf-8") as handle:
            lines = [(n, line) for n, line in enumerate(handle, 1) if line.strip()]
        for number, (line_number, line) in enumerate(lines):
            where = f"{path} line {line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptFileError(f"{where}: not valid JSON ({error.msg})") from None
            prompt = _row_prompt(row, where, prompt_key, messages_key)
            rows.append((row.get(id_key, number), prompt))
    if not rows:
        raise PromptFileError(f"{path}: no rows")
    return rows


# -- the model ----------------------------------------------------------------------------------------------------
def load_for_generation(model_dir: str | Path, base_model: str | None = None, device: str | None = None):
    """``(model, tokenizer)`` from a model folder or a LoRA adapter folder, in eval mode on ``device`` (CUDA when
    there is one). An adapter's base is ``base_model`` or the adapter config's ``base_model_name_or_path``; its
    tokenizer is the adapter folder's when it has one (the run saves it there), else the base's."""
    model_dir = Path(model_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # On CPU compute in float32 (bf16 matmuls there are slow); on GPU keep the dtype the weights were saved in.
    dtype = "auto" if device.startswith("cuda") else torch.float32
    adapter_config = model_dir / ADAPTER_CONFIG
    if adapter_config.is_file():
        from peft import PeftModel

        base = base_model or json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{adapter_config} names no base model: pass base_model (--base_model)")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        model = PeftModel.from_pretrained(model, model_dir)
        has_tokenizer = any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer = AutoTokenizer.from_pretrained(model_dir if has_tokenizer else base)
    elif (model_dir / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    else:
        raise FileNotFoundError(f"{model_dir} is not a model folder (no config.json) nor an adapter ({ADAPTER_CONFIG})")
    return model.to(device).eval(), tokenizer


# -- generating ---------------------------------------------------------------------------------------------------
def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def predict_jsonl(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    chat: bool = False,
    base_model: str | None = None,
    model_and_tokenizer: tuple[Any, Any] | None = None,
) -> Path:
    """Generate an answer for every prompt of ``input_path`` and write ``{"id", "generated"}`` rows to
    ``output_path`` (jsonl), batch by batch, flushed as they come, through a ``.partial`` file renamed at the end.

    ``model_and_tokenizer``: an already loaded pair, instead of loading ``model_dir`` (a notebook, a test).
    Returns the output path.
    """
    rows = read_prompts(input_path)  # every row checked before the model loads
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    model, tokenizer = model_and_tokenizer or load_for_generation(model_dir, base_model)
    partial = output_path.with_name(f".{output_path.name}.partial")
    with partial.open("w", encoding="utf-8") as handle:
        for batch in _batches(rows, batch_size):
            answers = generate_answers(model, tokenizer, [prompt for _, prompt in batch],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, chat=chat)
            for (row_id, _), answer in zip(batch, answers):
                handle.write(json.dumps({"id": row_id, "generated": answer}, ensure_ascii=False) + "\n")
            handle.flush()
    os.replace(partial, output_path)
    logger.info("wrote %d answers to %s", len(rows), output_path)
    return output_path
