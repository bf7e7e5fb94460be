"""The arguments of causal-LM fine-tuning data (:mod:`ftlib.tasks.causal_lm_data`), without torch or transformers:
parsing a recipe's arguments loads nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ftlib.core.options import refuse_without
from ftlib.data.arguments import DataArguments

FORMATS = ("messages", "prompt_completion", "instruction", "text")

ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_TEMPLATE_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


# the argument fields naming each shape's columns and settings (a flag of another shape than --data_format is refused)
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("messages_column",),
    "prompt_completion": ("prompt_column", "completion_column"),
    "instruction": ("instruction_column", "input_column", "output_column", "instruction_template",
                    "instruction_template_no_input"),
    "text": ("text_column",),
}


def names_file(value: str) -> bool:
    """Whether a template flag names a file rather than holding the template itself."""
    if "\n" in value or len(value) > 1024:
        return False
    try:
        return Path(value).is_file()
    except OSError:  # a long one-line template is no file name
        return False


@dataclass
class CausalLMDataArguments(DataArguments):
    """Supervised fine-tuning data for causal language models. ``label_column`` is not used: the answer columns
    (``completion_column``, ``output_column``, the assistant turns) are what is trained."""

    data_format: str = field(
        default="auto",
        metadata={"help": "Row shape: 'messages' (chat turns), 'prompt_completion', 'instruction' (instruction / "
                          "input / output) or 'text' (every token trained); 'auto' detects it from the columns, in "
                          "that order.", "choices": ["auto", *FORMATS]},
    )
    messages_column: str = field(default="messages", metadata={"help": "Column with a list of {role, content} turns."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column with the prompt (prompt_completion)."})
    completion_column: str = field(default="completion", metadata={"help": "Column with the completion (trained)."})
    instruction_column: str = field(default="instruction", metadata={"help": "Column with the instruction."})
    input_column: str = field(
        default="input", metadata={"help": "Column with the instruction's input (optional: empty or absent = none)."}
    )
    output_column: str = field(default="output", metadata={"help": "Column with the instruction's answer (trained)."})
    text_column: str = field(default="text", metadata={"help": "Column with plain text (format 'text')."})
    instruction_template: str = field(
        default=ALPACA_TEMPLATE,
        metadata={"help": "Prompt of an instruction row, with {instruction} and {input} (or a file holding it); "
                          "default: Alpaca's."},
    )
    instruction_template_no_input: str | None = field(
        default=None,
        metadata={"help": "Prompt of an instruction row whose input is empty, with {instruction} (or a file); default: "
                          "Alpaca's no-input variant with the default template, else --instruction_template with an "
                          "empty input."},
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "A Jinja chat template, or a file holding one, for a tokenizer that has none (it replaces "
                          "the tokenizer's own, with a warning, where there is one); saved with the tokenizer."},
    )
    apply_chat_template: bool = field(
        default=False,
        metadata={"help": "Render prompt_completion and instruction rows as a user turn and an assistant turn of the "
                          "chat template (for instruct models) instead of plain text."},
    )
    train_on_prompt: bool = field(
        default=False,
        metadata={"help": "Train the prompt, system and user tokens too (default: the loss is on the answers only)."},
    )
    max_seq_length: int = field(
        default=1024,
        metadata={"help": "Longest example in tokens. Longer rows are cut from the prompt side so the answer survives "
                          "(an answer longer than that alone loses its end); plain text is split into rows."},
    )
    packing: bool = field(
        default=False,
        metadata={"help": "Pack several training examples into each row of --max_seq_length tokens, each attending only "
                          "to itself (position ids restart per example)."},
    )
    drop_long: bool = field(
        default=False, metadata={"help": "Drop rows longer than --max_seq_length instead of cutting them."}
    )
    generation_eval: int = field(
        default=0,
        metadata={"help": "At every evaluation, also generate greedily for the first N validation prompts and score the "
                          "answers against the references: eval_exact_match (after normalisation) and eval_rougeL "
                          "(either can be --metric_for_best_model). 0: eval loss and perplexity only."},
    )
    max_new_tokens: int = field(
        default=128, metadata={"help": "Longest generated answer (--generation_eval, test predictions, ftlib-predict)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.label_column != "label":
            raise ValueError(f"--label_column is not used by causal LM fine-tuning (got {self.label_column!r}): the "
                             "answers are --completion_column, --output_column or the assistant turns")
        if self.generation_eval < 0 or self.max_new_tokens < 1:
            raise ValueError(f"--generation_eval must be >= 0 and --max_new_tokens >= 1, got {self.generation_eval} "
                             f"and {self.max_new_tokens}")
        if self.max_seq_length < 16:
            raise ValueError(f"--max_seq_length must be at least 16, got {self.max_seq_length}")
        if self.data_format != "auto" and self.data_format not in FORMATS:
            raise ValueError(f"--data_format must be 'auto' or one of {', '.join(FORMATS)}, got {self.data_format!r}")
        if self.data_format != "auto":  # columns of another shape would do nothing
            others = [name for shape, names in FORMAT_FIELDS.items() if shape != self.data_format for name in names]
            refuse_without(self, f"--data_format {self.data_format}", False,
                           tuple(n for n in others if n not in FORMAT_FIELDS[self.data_format]))
        chat_capable = self.data_format in ("auto", "prompt_completion", "instruction")
        refuse_without(self, "--data_format prompt_completion or instruction", chat_capable, ("apply_chat_template",))
        refuse_without(self, "a chat (--data_format messages, or --apply_chat_template)", self.data_format != "text",
                       ("chat_template",))
        refuse_without(self, "plain instruction rows (not --apply_chat_template)", not self.apply_chat_template,
                       ("instruction_template", "instruction_template_no_input"))
        for name in ("instruction_template", "instruction_template_no_input"):
            value = getattr(self, name)
            if value is not None and not names_file(value) and "{instruction}" not in value:
                raise ValueError(f"--{name} must contain {{instruction}} (or name a file): {value!r}")

