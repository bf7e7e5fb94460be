"""Token classification (named entities, tags per word): the task's data arguments and what the shared code
asks of the task (:data:`TASK`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftlib.data.arguments import DataArguments
from ftlib.tasks.base import (
    ENCODER_STRATEGY,
    TRAINING_DEFAULTS,
    PredictError,
    Task,
    atomic_file,
    inference_batches,
)
from ftlib.tasks.classification import check_predict


@dataclass
class TokenDataArguments(DataArguments):
    """Token classification: CoNLL files (.txt/.conll/.iob/.bio), JSON lines, or a Hub dataset with word and
    tag columns. ``label_column`` is not used: the tags are ``tags_column`` (a CoNLL file's last column)."""

    tokens_column: str = field(default="tokens", metadata={"help": "Column (JSON key) with each sentence's words."})
    tags_column: str = field(
        default="tags", metadata={"help": "Column (JSON key) with each sentence's tags ('ner_tags' on Hub CoNLL-2003)."}
    )
    tag_names: list[str] | None = field(
        default=None, metadata={"help": "The tag of each integer id, for integer tags without ClassLabel names."}
    )
    tag_scheme: str | None = field(
        default=None,
        metadata={"help": "Leave unset to detect from the train tags.", "choices": ["IOB1", "BIO", "BIOES", "IO"]},
    )
    max_seq_length: int | None = field(
        default=256,
        metadata={"help": "Longest window in tokens (capped at the model's limit); longer sentences are split. Batches pad dynamically."},
    )
    stride: int = field(
        default=32,
        metadata={"help": "Tokens shared by consecutive windows of a long sentence; each word is predicted once, "
                          "in the window where it has the most context."},
    )
    label_all_subtokens: bool = field(
        default=False,
        metadata={"help": "Train on every sub-token of a word (B-X becomes I-X after the first) instead of the first only."},
    )
    loss_per_token: bool = field(
        default=True,
        metadata={"help": "Every labelled token weighs the same in training: a batch's summed token loss is divided "
                          "by the training set's mean labelled tokens per batch, not by its own count (false: "
                          "transformers' per-batch mean, which over-weighs the tokens of batches of short "
                          "sentences, as length-grouped batches make systematic)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"--max_seq_length must be at least 8, got {self.max_seq_length}")
        if self.stride < 0:
            raise ValueError(f"--stride must be >= 0, got {self.stride}")
        if self.label_column != "label":
            raise ValueError(f"--label_column is not used by token classification (got {self.label_column!r}): "
                             "the tags are --tags_column")
        if self.max_seq_length is not None and self.stride > self.max_seq_length // 2:
            raise ValueError(
                f"--stride {self.stride} must be at most half of --max_seq_length ({self.max_seq_length}): "
                "windows would advance by only a few tokens"
            )


DEFAULTS = {
    **TRAINING_DEFAULTS,
    "train_sampling_strategy": "group_by_length",  # batches of similar length pad less
    # the text recipe's strategy, chosen again on CoNLL-2003 subsets of 100 and 1,000 sentences (bench/token_suite.py)
    **ENCODER_STRATEGY,
}
OUTPUT_SUFFIXES = (".conll", ".txt", ".jsonl")


def read_input(path: Path, settings: dict[str, Any], options: dict[str, Any]):
    """Sentences from a CoNLL file (a word a line, any tag columns after it kept as gold) or JSON lines of word
    lists; ids are the sentences' ids."""
    from ftlib.data.token import read_token_file

    if path.is_dir():
        raise PredictError(f"--input {path} is a folder; words are read from a CoNLL (.conll, .txt, .iob, .bio) "
                           "or JSON lines file")
    data = read_token_file(path, settings["tokens_column"], settings["tags_column"], settings["tag_names"],
                           require_tags=False)
    return data, list(data["id"])


def predict(model, folder, data, ids, settings: dict[str, Any], output: Path, options: dict[str, Any]) -> None:
    """The predicted tag of every word of every sentence: windows as in training (``--max_seq_length``,
    ``--stride``), each word read at its first sub-token in the window where it has the most context; written as
    CoNLL (``word<TAB>[gold<TAB>]predicted``) or JSON lines."""
    import numpy as np
    from datasets import Dataset
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from ftlib.data.text import effective_max_length
    from ftlib.data.token import tokenize_dataset, words_predictions

    tokenizer = AutoTokenizer.from_pretrained(folder.path)
    if not getattr(tokenizer, "is_fast", False):
        raise PredictError(f"--model {folder.path}: token classification needs a fast tokenizer (word ids)")
    max_length = effective_max_length(tokenizer, model.config, settings["max_seq_length"])
    # the tokenizer's alignment marks each word's first sub-token with a label; the gold tags (if any) are not needed
    marker = folder.labels[0]
    words = Dataset.from_dict({"tokens": list(data["tokens"]),
                               "tags": [[marker] * len(tokens) for tokens in data["tokens"]]})
    windows = tokenize_dataset(words, tokenizer, {marker: 0}, max_length, stride=settings["stride"])
    inputs = windows.select_columns([c for c in tokenizer.model_input_names if c in windows.column_names])
    loader = DataLoader(inputs, batch_size=options["batch_size"], collate_fn=DataCollatorWithPadding(tokenizer))
    width = max((len(ids) for ids in windows["input_ids"]), default=0)
    pred_ids = np.zeros((len(windows), width), dtype=np.int64)
    row = 0
    for batch in inference_batches(loader, options["device"], options["progress"]):
        batch_ids = model(**batch).logits.argmax(-1).cpu().numpy()
        pred_ids[row:row + len(batch_ids), : batch_ids.shape[1]] = batch_ids
        row += len(batch_ids)
    tags = words_predictions(pred_ids, windows, len(data), dict(enumerate(folder.labels)))
    if len(tags) != len(data):  # never: one prediction per sentence, whatever the windows
        raise RuntimeError(f"{len(tags)} predictions for {len(data)} sentences")
    write_tag_predictions(output, data, tags)


def write_tag_predictions(path: Path, data, tags: list[list[str]]) -> None:
    """CoNLL (``word<TAB>[gold<TAB>]predicted``, a blank line between sentences) or JSON lines (``id``, ``tokens``,
    ``predicted``, and the input's ``tags`` when it has them)."""
    from ftlib.data.token import write_conll_predictions

    with atomic_file(path) as partial:
        if path.suffix != ".jsonl":
            write_conll_predictions(partial, data, tags)
            return
        golds = data["tags"] if "tags" in data.column_names else [None] * len(data)
        with partial.open("w", encoding="utf-8") as handle:
            for sentence_id, tokens, gold, predicted in zip(data["id"], data["tokens"], golds, tags):
                row = {"id": sentence_id, "tokens": tokens, "predicted": predicted}
                if gold is not None:
                    row["tags"] = gold
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


TASK = Task(
    name="token",
    title="token classification",
    pipeline_tag="token-classification",
    data_arguments=TokenDataArguments,
    auto_model="AutoModelForTokenClassification",
    head_suffix="ForTokenClassification",
    predict_settings=("tokens_column", "tags_column", "tag_names", "max_seq_length", "stride"),
    output_suffixes=OUTPUT_SUFFIXES,
    defaults=DEFAULTS,
    read_input=read_input,
    predict=predict,
    check_predict=check_predict,
    one_output_is_regression=False,
)
