"""Text classification (single sentences or pairs; single-label, multi-label, regression): the task's data
arguments and what the shared code asks of the task (:data:`TASK`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftlib.core.options import refuse_without
from ftlib.data.arguments import DataArguments, tune_thresholds_field


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
