"""Causal language modelling (supervised fine-tuning of chats, prompt / completion pairs, instructions, and plain
text): what the shared code asks of the task (:data:`TASK`). Its data code is :mod:`ftlib.tasks.causal_lm_data`
(rendering, answer-only labels, packing), its arguments :mod:`ftlib.tasks.causal_lm_args`, its generation and
scoring :mod:`ftlib.tasks.causal_lm_generate`. Importing this module loads no torch or transformers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ftlib.tasks.base import TRAINING_DEFAULTS, PredictError, Task, atomic_file
from ftlib.tasks.causal_lm_args import CausalLMDataArguments

# LoRA first (what most people fine-tune decoders with): every attention and MLP projection, at peft's usual
# rate for adapters; batches of similar length pad less; the `length` column stays for the sampler (the collators
# drop it). The encoder recipes' frozen embeddings and step budget are not applied: nothing was measured for them
# on decoders.
DEFAULTS = {
    **TRAINING_DEFAULTS,
    "lora": True,
    "learning_rate": 2e-4,
    "warmup_steps": 0.03,
    "num_train_epochs": 2,
    "train_sampling_strategy": "group_by_length",
    "remove_unused_columns": False,
}

# The data settings ftlib-predict takes from the run: how its prompts were rendered, and how long answers may be.
PREDICT_SETTINGS = ("data_format", "messages_column", "prompt_column", "instruction_column", "input_column",
                    "instruction_template", "instruction_template_no_input", "apply_chat_template", "max_seq_length",
                    "max_new_tokens")
PROMPT_SHAPES = (("messages", "messages_column"), ("prompt_completion", "prompt_column"),
                 ("instruction", "instruction_column"))


def perplexity(loss: float) -> float:
    """``exp(loss)`` of a mean token loss; inf where that overflows."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def prompt_format(columns: list[str], settings: dict[str, Any], source: str) -> str:
    """The shape of prompt rows: the run's own, or the first whose column the input has (messages, prompt,
    instruction); plain text has no prompt to answer."""
    if settings.get("data_format") == "text":
        raise PredictError(f"{source}: the model was trained on plain text (--data_format text); ftlib-predict "
                           "answers prompts, which such a run never saw")
    for shape, column in PROMPT_SHAPES:
        if settings.get(column) in columns:
            return shape
    wanted = ", ".join(f"'{settings.get(column)}'" for _, column in PROMPT_SHAPES)
    raise PredictError(f"{source}: no prompt column ({wanted}); it has {sorted(columns)}")


def read_input(path: Path, settings: dict[str, Any], options: dict[str, Any]):
    """Prompt rows from a jsonl / json / csv / parquet file, in the run's columns: ``messages`` (turns, answered
    after the last user turn), ``prompt``, or ``instruction`` (+ ``input``); every row checked before the model
    loads. Ids: an ``id`` column, else the row numbers."""
    from ftlib.data.files import empty_rows, load_files

    if path.is_dir():
        raise PredictError(f"--input {path} is a folder; prompts are read from a jsonl, json, csv or parquet file")
    data = load_files({"predict": str(path)})["predict"]
    shape = prompt_format(data.column_names, settings, str(path))
    column = dict(PROMPT_SHAPES)[shape]
    empty = empty_rows(data, [settings[column]])
    if empty:
        raise PredictError(f"{path}: data row {empty[0] + 1} has an empty '{settings[column]}'"
                           + (f" ({len(empty)} rows in all)" if len(empty) > 1 else ""))
    ids = data["id"] if "id" in data.column_names else list(range(len(data)))
    return data, list(ids)


def predict(model, folder, data, ids, settings: dict[str, Any], output: Path, options: dict[str, Any]) -> None:
    """A greedy answer for every prompt, rendered as the run rendered its prompts, in batches, each batch written
    to ``output`` (JSON lines: ``id``, ``generated``, and ``reference`` where the row has an answer) as it comes."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from ftlib.tasks.causal_lm_data import encode_prompts
    from ftlib.tasks.causal_lm_generate import generate_answers

    tokenizer = AutoTokenizer.from_pretrained(folder.path)
    arguments = {f: getattr(CausalLMDataArguments, f, None) for f in ("completion_column", "output_column")}
    run_args = SimpleNamespace(**{**arguments, **settings})
    prompts = encode_prompts(data, tokenizer, run_args, prompt_format(data.column_names, settings, "--input"))
    batch = options["batch_size"]
    with atomic_file(output) as partial, partial.open("w", encoding="utf-8") as handle:
        for start in range(0, len(prompts), batch):
            rows = prompts[start:start + batch]
            answers = generate_answers(model, tokenizer, rows["input_ids"], max_new_tokens=settings["max_new_tokens"],
                                       batch_size=batch)
            for row_id, answer, reference in zip(ids[start:start + batch], answers, rows["reference"]):
                row = {"id": row_id, "generated": answer}
                if reference is not None:
                    row["reference"] = reference
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()


TASK = Task(
    name="causal_lm",
    title="text generation",
    pipeline_tag="text-generation",
    data_arguments=CausalLMDataArguments,
    auto_model="AutoModelForCausalLM",
    head_suffix="ForCausalLM",
    predict_settings=PREDICT_SETTINGS,
    output_suffixes=(".jsonl",),
    defaults=DEFAULTS,
    read_input=read_input,
    predict=predict,
    one_output_is_regression=False,
)
