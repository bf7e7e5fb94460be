"""Text classification (single sentences or pairs; single-label, multi-label, regression): the task's data
arguments and what the shared code asks of the task (:data:`TASK`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlib.core.options import refuse_without
from ftlib.data.arguments import DataArguments, tune_thresholds_field
from ftlib.tasks.base import ENCODER_STRATEGY, TRAINING_DEFAULTS, PredictError, Task
from ftlib.tasks.classification import OUTPUT_SUFFIXES, check_predict, predict_with_loader, usable_id_column

logger = logging.getLogger("ftlib.outputs.predict")


@dataclass
class TextDataArguments(DataArguments):
    text_column: str = field(default="text", metadata={"help": "Column with the text (the first sentence of a pair)."})
    text_pair_column: str | None = field(default=None, metadata={"help": "Column with the second sentence of a pair."})
    id_column: str | None = field(default=None, metadata={"help": "Column identifying rows in predictions (default: row number)."})
    problem_type: str | None = field(
        default=None,
        metadata={
            "help": "Leave unset to detect from the label column (floats: regression, lists: multi-label).",
            "choices": ["single_label_classification", "multi_label_classification", "regression"],
        },
    )
    label_separator: str | None = field(
        default=None, metadata={"help": "Multi-label from strings like 'a;b': the separator (';')."}
    )
    tune_thresholds: bool | None = tune_thresholds_field()
    max_seq_length: int | None = field(
        default=256, metadata={"help": "Longest tokenised input; capped at the model's limit. Batches pad dynamically."}
    )
    truncation: str = field(
        default="head",
        metadata={"help": "'head' keeps the start of long texts; 'head_tail' keeps start and end.", "choices": ["head", "head_tail"]},
    )
    head_fraction: float = field(default=0.25, metadata={"help": "Share of the budget kept from the start with head_tail."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        if not 0.0 <= self.head_fraction <= 1.0:
            raise ValueError(f"--head_fraction must be in [0, 1], got {self.head_fraction}")
        refuse_without(self, "--truncation head_tail", self.truncation == "head_tail", ("head_fraction",))


DEFAULTS = {
    **TRAINING_DEFAULTS,
    "train_sampling_strategy": "group_by_length",  # batches of similar length pad less
    **ENCODER_STRATEGY,  # frozen embeddings, lr 1e-4, head 1e-3, layer decay 0.9, 10% warm-up, >= 250 steps
    "num_train_epochs": 3,
}


def read_input(path: Path, settings: dict[str, Any], options: dict[str, Any]):
    """The rows of a csv / tsv / json / jsonl / parquet file with the run's text column(s), read as training reads
    them; an empty text is predicted as such (warned), every row empty is an error. Ids: ``--id_column``, else the
    row numbers (said once when the run had an id column the input lacks)."""
    from ftlib.data.files import empty_rows, load_files, require_columns

    if path.is_dir():
        raise PredictError(f"--input {path} is a folder; text is read from a csv, tsv, json, jsonl or parquet file")
    data = load_files({"predict": str(path)})["predict"]
    id_column = usable_id_column(data, settings, str(path), "id_column" in options.get("given", ()),
                                 "their row numbers (0, 1, ...)")
    columns = [settings["text_column"], settings["text_pair_column"], id_column]
    require_columns(data, columns, str(path))
    empty = empty_rows(data, columns[:2])
    if len(empty) == len(data):
        raise PredictError(f"{path}: every row has an empty text ('{settings['text_column']}'); is that the "
                           "right column? (--text_column)")
    if empty:
        first = ", ".join(str(r + 1) for r in empty[:10]) + (", ..." if len(empty) > 10 else "")
        logger.warning("%s: %d of %d rows have an empty text (data rows %s); predicted as empty input",
                       path, len(empty), len(data), first)
    ids = data[id_column] if id_column else list(range(len(data)))
    return data, list(ids)


def predict(model, folder, data, ids, settings: dict[str, Any], output: Path, options: dict[str, Any]) -> None:
    """Labels for every row: tokenised as in training, padded per batch to its longest row."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from ftlib.data.text import effective_max_length, tokenize_text

    tokenizer = AutoTokenizer.from_pretrained(folder.path)
    max_length = effective_max_length(tokenizer, model.config, settings["max_seq_length"])
    encoded = tokenize_text(data, tokenizer, settings["text_column"], settings["text_pair_column"], max_length,
                            settings["truncation"], settings["head_fraction"], keep=()).remove_columns("length")
    loader = DataLoader(encoded, batch_size=options["batch_size"], collate_fn=DataCollatorWithPadding(tokenizer))
    predict_with_loader(model, folder, loader, ids, output, options)


TASK = Task(
    name="text",
    title="text classification",
    pipeline_tag="text-classification",
    data_arguments=TextDataArguments,
    auto_model="AutoModelForSequenceClassification",
    head_suffix="ForSequenceClassification",
    predict_settings=("text_column", "text_pair_column", "id_column", "max_seq_length", "truncation", "head_fraction"),
    output_suffixes=OUTPUT_SUFFIXES,
    defaults=DEFAULTS,
    read_input=read_input,
    predict=predict,
    check_predict=check_predict,
)
