"""Token classification (named entities, tags per word): the task's data arguments and what the shared code
asks of the task (:data:`TASK`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftlib.data.arguments import DataArguments


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
