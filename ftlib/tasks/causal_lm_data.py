"""Causal-LM fine-tuning data: four row shapes rendered to text and tokenised into ``input_ids`` and ``labels``
(the answer only, by default), long rows cut from the prompt side, and the collators (dynamic padding; packing).

Row shapes (``--data_format``; ``auto`` detects the shape from the columns):

- ``messages``: a list of ``{"role", "content"}`` turns (a JSON string in a csv cell), rendered with the tokenizer's
  chat template (``--chat_template`` supplies one). Every assistant turn is trained, not only the last.
- ``prompt_completion``: a prompt and its completion, concatenated as they are (trl's ``SFTTrainer`` does the same);
  with ``--apply_chat_template`` a user turn and an assistant turn of the chat template. Prompt and completion given
  as lists of turns (trl's conversational form) always go through the chat template.
- ``instruction``: instruction / input / output rows (Alpaca), the prompt rendered by ``--instruction_template``.
- ``text``: plain text (continued pre-training on a domain corpus), every token trained; a long text is split into
  rows of ``--max_seq_length`` tokens.

How an example is built: the row becomes a list of text segments, each a prompt or an answer; the segments of a
whole batch of rows are tokenised in one call of the fast tokenizer and joined again, so what the model is trained
on after a prompt is exactly what it sees at inference, where the prompt is tokenised alone. A chat's segments come
from rendering the conversation prefix by prefix (each prefix must be a prefix of the whole rendering, else the
template is refused). Plain answers end with the tokenizer's EOS so the model learns to stop; a chat answer ends
with the template's end-of-turn marker (a special token), and gets EOS only where the template writes none.

The first label of every example is -100 (no token predicts it), so ``labels[..., 1:] != -100`` counts exactly the
tokens the loss averages over: that is Trainer's ``num_items_in_batch``, which makes the loss the mean over answer
tokens of the whole accumulated batch (see :func:`count_answer_tokens`).
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_left, insort
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from transformers import DataCollatorWithFlattening, PreTrainedTokenizerBase

from ftlib.data.files import limit_samples, load_data, require_columns, source_name
from ftlib.data.labels import ensure_validation
from ftlib.tasks.causal_lm_args import (  # noqa: F401 - the arguments are part of this task's interface
    ALPACA_TEMPLATE,
    ALPACA_TEMPLATE_NO_INPUT,
    FORMATS,
    CausalLMDataArguments,
    names_file,
)

logger = logging.getLogger("ftlib")

IGNORE_INDEX = -100
KNOWN_ROLES = ("system", "user", "assistant", "tool")
ANSWER_ROLE = "assistant"
# internal columns carried through encoding: the source row (errors and counts) and whether it was cut
ROW, CUT = "__row__", "__cut__"


def detect_format(columns: Sequence[str], data_args: CausalLMDataArguments, source: str) -> str:
    """``--data_format``, or for ``auto`` the first shape whose columns are all there: messages, prompt and completion,
    instruction and output, text. None of them is an error naming the columns each shape needs."""
    if data_args.data_format != "auto":
        return data_args.data_format
    needs = {
        "messages": [data_args.messages_column],
        "prompt_completion": [data_args.prompt_column, data_args.completion_column],
        "instruction": [data_args.instruction_column, data_args.output_column],
        "text": [data_args.text_column],
    }
    for shape, names in needs.items():
        if all(name in columns for name in names):
            return shape
    wanted = "; ".join(f"{shape}: {' + '.join(map(repr, names))}" for shape, names in needs.items())
    raise ValueError(f"{source}: cannot tell the data format from the columns {', '.join(columns)} (they need {wanted}); "
                     "pass --data_format and the column flags")


def read_template(value: str | None) -> str | None:
    """A template given inline, or the text of the file it names."""
    if value is None:
        return None
    return Path(value).read_text(encoding="utf-8") if names_file(value) else value


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, data_args: CausalLMDataArguments) -> PreTrainedTokenizerBase:
    """Set ``--chat_template`` on the tokenizer (so it is saved with it) and a pad token where there is none: EOS,
    which is safe here because labels come from the data, never from pad ids, so a trained EOS stays trained."""
    template = read_template(data_args.chat_template)
    if template is not None:
        if tokenizer.chat_template and tokenizer.chat_template != template:
            logger.warning("--chat_template replaces the tokenizer's own chat template")
        tokenizer.chat_template = template
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no EOS token: a fine-tuned model could not learn to stop")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# -- rendering rows into prompt and answer segments ----------------------------------------------------------------
Segment = tuple[str, bool]  # (text, is_answer)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _turns(value: Any) -> Any:
    """A chat cell: a list of turns, or its JSON text (a csv cell)."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def chat_problem(turns: Any) -> tuple[str, bool] | None:
    """What is wrong with a chat, and whether it is only an empty answer (which ``--drop_empty`` drops), or None."""
    if not isinstance(turns, list) or not turns:
        return f"not a list of {{role, content}} turns: {str(turns)[:80]!r}", isinstance(turns, list)
    for k, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            keys = ", ".join(turn) if isinstance(turn, dict) else type(turn).__name__
            return f"turn {k} has no 'role' and 'content' (it has {keys})", False
        if turn["role"] not in KNOWN_ROLES:
            return f"turn {k} has an unknown role {turn['role']!r} (known: {', '.join(KNOWN_ROLES)})", False
        if turn["content"] is not None and not isinstance(turn["content"], str):
            return f"turn {k}'s content is not a string ({type(turn['content']).__name__})", False
    roles = [turn["role"] for turn in turns]
    if ANSWER_ROLE not in roles:
        return f"a chat without an assistant turn (roles: {', '.join(roles)})", False
    if roles[0] == ANSWER_ROLE:
        return "the chat starts with an assistant turn: there is no prompt to answer", False
    for k, turn in enumerate(turns, start=1):
        if turn["role"] == ANSWER_ROLE and not _text(turn["content"]).strip():
            return f"turn {k} is an empty answer", True
    return None


def row_problem(row: dict, data_format: str, data_args: CausalLMDataArguments) -> tuple[str, str, bool] | None:
    """(column, what is wrong, whether ``--drop_empty`` may drop it) for a bad row, else None."""
    if data_format == "messages":
        problem = chat_problem(_turns(row[data_args.messages_column]))
        return None if problem is None else (data_args.messages_column, *problem)
    if data_format == "text":
        column = data_args.text_column
        return (column, "empty text", True) if not _text(row[column]).strip() else None
    prompt_col, answer_col = ((data_args.prompt_column, data_args.completion_column) if data_format == "prompt_completion"
                              else (data_args.instruction_column, data_args.output_column))
    prompt, answer = row[prompt_col], row[answer_col]
    if isinstance(prompt, list) or isinstance(answer, list):  # conversational prompt / completion
        turns = (prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]) + (
            answer if isinstance(answer, list) else [{"role": ANSWER_ROLE, "content": answer}])
        problem = chat_problem(turns)
        return None if problem is None else (f"{prompt_col} / {answer_col}", *problem)
    if not _text(answer).strip():
        return answer_col, "an empty answer", True
    if not _text(prompt).strip():
        return prompt_col, "an empty prompt", True
    return None


def check_rows(dataset: Dataset, data_format: str, data_args: CausalLMDataArguments, source: str) -> Dataset:
    """Every bad row named before training: the first one in full, and how many there are. Empty answers (and
    prompts, texts) are dropped with ``--drop_empty`` (a warning says how many); other problems are errors."""
    columns = {"messages": [data_args.messages_column], "text": [data_args.text_column],
               "prompt_completion": [data_args.prompt_column, data_args.completion_column],
               "instruction": [data_args.instruction_column, data_args.output_column]}[data_format]
    plain = dataset.select_columns(columns).with_format(None)
    errors: list[tuple[int, str, str]] = []
    empty: list[int] = []
    for start in range(0, len(plain), 1000):
        batch = plain[start : start + 1000]
        for offset in range(len(batch[columns[0]])):
            problem = row_problem({c: batch[c][offset] for c in columns}, data_format, data_args)
            if problem is None:
                continue
            column, what, droppable = problem
            if droppable and data_args.drop_empty:
                empty.append(start + offset)
            else:
                errors.append((start + offset, column, what))
    if errors:
        row, column, what = errors[0]
        more = f"; {len(errors)} rows have problems (data rows {', '.join(str(r + 1) for r, _, _ in errors[:10])}" \
               f"{', ...' if len(errors) > 10 else ''})" if len(errors) > 1 else ""
        hint = " (--drop_empty drops empty ones)" if "empty" in what else ""
        raise ValueError(f"{source}: column '{column}', data row {row + 1}: {what}{hint}{more}")
    if empty:
        if len(empty) == len(dataset):
            raise ValueError(f"{source}: every row is empty ({', '.join(columns)}); is that the right column?")
        logger.warning("%s: %d of %d rows have an empty answer or prompt; dropped (--drop_empty)", source, len(empty),
                       len(dataset))
        dropped = set(empty)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in dropped])
    return dataset


def chat_segments(turns: list[dict], tokenizer: PreTrainedTokenizerBase, where: str) -> list[Segment]:
    """A chat cut into prompt and answer segments by rendering it prefix by prefix with the chat template: each
    assistant turn's answer is what its rendering adds to the rendering of what came before plus the generation
    prompt. Turns after the last answer are left out (nothing of them is trained)."""
    if not tokenizer.chat_template:
        raise ValueError(f"{where}: the tokenizer has no chat template; pass --chat_template (a Jinja string or file)")
    last = max(k for k, turn in enumerate(turns) if turn["role"] == ANSWER_ROLE)
    turns = [{"role": t["role"], "content": _text(t["content"])} for t in turns[: last + 1]]

    def render(prefix: list[dict], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(prefix, tokenize=False, add_generation_prompt=generation_prompt)

    full = render(turns)
    segments: list[Segment] = []
    done = 0  # characters of ``full`` already in segments
    for k, turn in enumerate(turns):
        if turn["role"] != ANSWER_ROLE:
            continue
        before = render(turns[:k], generation_prompt=True)
        through = full if k == last else render(turns[: k + 1])
        if not (full.startswith(through) and through.startswith(before) and len(before) >= done):
            raise ValueError(
                f"{where}: the chat template renders turn {k + 1} differently inside the whole conversation than on its "
                "own (a rendering of the turns so far is not a prefix of the full one), so the answer spans cannot "
                "be found; use a template that renders each turn the same way whatever follows (--chat_template)"
            )
        answer = through[len(before):]
        if not answer.strip() or turn["content"].strip() not in answer:
            raise ValueError(
                f"{where}: the chat template renders no answer span for turn {k + 1} (the assistant's text is not in "
                f"what the turn adds: {answer[:80]!r}); use a template that writes assistant turns (--chat_template)"
            )
        segments += [(full[done : len(before)], False), (answer, True)]
        done = len(through)
    return segments


def fill_instruction(template: str, instruction: str, given_input: str) -> str:
    """An instruction template with its fields filled (plain replacement: other braces in the template stay)."""
    return template.replace("{instruction}", instruction).replace("{input}", given_input)


@dataclass
class RowRenderer:
    """Turns a row of one shape into segments, and says whether they are chat text (whose special tokens are in the
    text) or plain text (which gets the tokenizer's BOS and an EOS after the answer)."""

    data_format: str
    data_args: CausalLMDataArguments
    tokenizer: PreTrainedTokenizerBase
    template: str = ""
    template_no_input: str = ""

    def __post_init__(self) -> None:
        args = self.data_args
        self.template = read_template(args.instruction_template)
        given = read_template(args.instruction_template_no_input)
        if given is None:  # the Alpaca pair by default; a user's template alone serves both
            given = ALPACA_TEMPLATE_NO_INPUT if args.instruction_template == ALPACA_TEMPLATE else self.template
        self.template_no_input = given
        for name, text in (("instruction_template", self.template), ("instruction_template_no_input", given)):
            if "{instruction}" not in text:
                raise ValueError(f"--{name} must contain {{instruction}}: {text[:80]!r}")

    def prompt_turns(self, row: dict) -> tuple[list[dict] | str, str | list | None]:
        """(the prompt as turns or plain text, the answer) of a row of a prompt / answer shape."""
        args = self.data_args
        if self.data_format == "prompt_completion":
            prompt, answer = row[args.prompt_column], row.get(args.completion_column)
            if isinstance(prompt, list):
                return prompt, answer
            return ([{"role": "user", "content": _text(prompt)}] if args.apply_chat_template else _text(prompt)), answer
        instruction = _text(row[args.instruction_column])
        given_input = _text(row.get(args.input_column)).strip()
        answer = row.get(args.output_column)
        if args.apply_chat_template:
            return [{"role": "user", "content": f"{instruction}\n\n{given_input}" if given_input else instruction}], answer
        template = self.template if given_input else self.template_no_input
        return fill_instruction(template, instruction, given_input), answer

    def segments(self, row: dict, where: str) -> tuple[list[Segment], bool]:
        args = self.data_args
        if self.data_format == "messages":
            return chat_segments(_turns(row[args.messages_column]), self.tokenizer, where), True
        if self.data_format == "text":
            return [(_text(row[args.text_column]), True)], False
        prompt, answer = self.prompt_turns(row)
        if isinstance(prompt, list):
            answer_turns = answer if isinstance(answer, list) else [{"role": ANSWER_ROLE, "content": _text(answer)}]
            return chat_segments(prompt + answer_turns, self.tokenizer, where), True
        return [(prompt, False), (_text(answer), True)], False

    def prompt(self, row: dict) -> tuple[str, bool, str | None]:
        """(the prompt as the model sees it at inference: chat turns up to the generation prompt of the last answer,
        whether it is chat text, the reference answer or None) for generation and prediction."""
        args = self.data_args
        if self.data_format == "text":
            raise ValueError("plain text rows have no prompt to answer (--data_format text)")
        if self.data_format == "messages":
            turns = _turns(row[args.messages_column])
            answers = [k for k, t in enumerate(turns) if t.get("role") == ANSWER_ROLE]
            cut = answers[-1] if answers else len(turns)
            reference = _text(turns[cut]["content"]) if answers else None
            return self._render_prompt(turns[:cut]), True, reference
        prompt, answer = self.prompt_turns(row)
        reference = None if answer is None else (
            _text(answer[-1].get("content")) if isinstance(answer, list) else _text(answer))
        if isinstance(prompt, list):
            return self._render_prompt(prompt), True, reference
        return prompt, False, reference

    def _render_prompt(self, turns: list[dict]) -> str:
        if not self.tokenizer.chat_template:
            raise ValueError("the tokenizer has no chat template; pass --chat_template (a Jinja string or file)")
        turns = [{"role": t["role"], "content": _text(t["content"])} for t in turns]
        return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)


# -- tokens and labels -------------------------------------------------------------------------------------------
def leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (Llama's BOS; none for GPT-2, Qwen2, SmolLM2)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def join_segments(
    pieces: Sequence[Sequence[int]], is_answer: Sequence[bool], chat: bool, bos: Sequence[int], eos_id: int,
    special_ids: set[int],
) -> tuple[list[int], list[bool]]:
    """The token ids of a row from its segments' ids, and which are answer tokens. Plain text gets ``bos`` in front
    and EOS after each answer; a chat answer gets EOS only when its rendering holds no special token (no
    end-of-turn marker that would teach the model to stop)."""
    ids: list[int] = [] if chat else list(bos)
    answer: list[bool] = [False] * len(ids)
    for piece, trained in zip(pieces, is_answer, strict=True):
        piece = list(piece)
        if trained and (not chat or not special_ids.intersection(piece)) and (not piece or piece[-1] != eos_id):
            piece.append(eos_id)
        ids += piece
        answer += [trained] * len(piece)
    return ids, answer


def fit_length(ids: list[int], answer: list[bool], max_length: int) -> tuple[list[int], list[bool]]:
    """A row cut to ``max_length`` tokens from the prompt side: the last answer (and what follows it) is kept whole
    with as much of what precedes it as fits. If that answer alone is too long, the last quarter of the budget's
    worth of prompt is kept (an answer with no question teaches nothing) and the answer loses its end."""
    if len(ids) <= max_length:
        return ids, answer
    start = len(answer)
    while start > 0 and not answer[start - 1]:  # end of the last answer run
        start -= 1
    while start > 0 and answer[start - 1]:  # its start
        start -= 1
    prompt_len, answer_len = start, len(ids) - start
    keep_prompt = max(max_length - answer_len, min(prompt_len, max_length // 4))
    keep_answer = max_length - keep_prompt
    keep = list(range(prompt_len - keep_prompt, prompt_len)) + list(range(prompt_len, prompt_len + keep_answer))
    return [ids[i] for i in keep], [answer[i] for i in keep]


def labels_for(ids: Sequence[int], answer: Sequence[bool], train_on_prompt: bool, where: str) -> list[int]:
    """The labels of a row: its answer tokens (every token with ``train_on_prompt``), -100 elsewhere and on the first
    token, which nothing predicts. A row with no trained token is an error naming it."""
    labels = [token if (trained or train_on_prompt) else IGNORE_INDEX for token, trained in zip(ids, answer, strict=True)]
    if labels:
        labels[0] = IGNORE_INDEX
    if all(label == IGNORE_INDEX for label in labels):
        raise ValueError(f"{where}: no token of this row is trained (its labels are all -100: the answer rendered to "
                         "no tokens, or only to the first one)")
    return labels


@dataclass
class LengthReport:
    """What ``--max_seq_length`` did to a split."""

    source: str
    rows: int
    cut: int = 0
    dropped: int = 0
    max_seq_length: int = 0
    split_texts: bool = False

    def message(self) -> str | None:
        if self.cut:
            how = ("split into rows of that many tokens" if self.split_texts
                   else "cut from the prompt side so their answers survive (--drop_long drops them instead)")
            return f"{self.source}: {self.cut} of {self.rows} rows were longer than {self.max_seq_length} tokens: {how}"
        if self.dropped:
            return (f"{self.source}: {self.dropped} of {self.rows} rows were longer than {self.max_seq_length} tokens: "
                    "dropped (--drop_long)")
        return None


def encode_dataset(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: CausalLMDataArguments, data_format: str,
    source: str,
) -> tuple[Dataset, LengthReport]:
    """Rows checked (:func:`check_rows`), rendered and tokenised in batches into ``input_ids``, ``labels`` and
    ``length`` (for length-grouped batches), long rows cut or dropped (the report counts them)."""
    rows_in = len(dataset)
    dataset = dataset.add_column(ROW, list(range(rows_in)))  # before any drop: errors name the file's row
    dataset = check_rows(dataset, data_format, data_args, source)
    renderer = RowRenderer(data_format, data_args, tokenizer)
    bos, eos_id = leading_special_ids(tokenizer), tokenizer.eos_token_id
    special_ids = set(tokenizer.all_special_ids)
    max_length, text_rows = data_args.max_seq_length, data_format == "text"

    def encode(batch: dict) -> dict:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        rendered = [renderer.segments(row, f"{source}, data row {row[ROW] + 1}") for row in rows]
        texts = [text for segments, _ in rendered for text, _ in segments]
        flat = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        out: dict[str, list] = {"input_ids": [], "labels": [], "length": [], ROW: [], CUT: []}
        at = 0
        for row, (segments, chat) in zip(rows, rendered, strict=True):
            pieces, at = flat[at : at + len(segments)], at + len(segments)
            ids, answer = join_segments(pieces, [trained for _, trained in segments], chat, bos, eos_id, special_ids)
            where = f"{source}, data row {row[ROW] + 1}"
            too_long = len(ids) > max_length
            if too_long and data_args.drop_long:
                continue
            if text_rows:  # a long text: consecutive rows of max_length tokens
                chunks = [(ids[i : i + max_length], answer[i : i + max_length]) for i in range(0, len(ids), max_length)]
                chunks = [c for c in chunks if len(c[0]) > 1] or chunks[:1]  # a 1-token tail trains nothing
            else:
                chunks = [fit_length(ids, answer, max_length)]
            for k, (chunk_ids, chunk_answer) in enumerate(chunks):
                out["input_ids"].append(chunk_ids)
                out["labels"].append(labels_for(chunk_ids, chunk_answer, data_args.train_on_prompt, where))
                out["length"].append(len(chunk_ids))
                out[ROW].append(row[ROW])
                out[CUT].append(int(too_long and k == 0))
        return out

    encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                          num_proc=data_args.preprocessing_num_workers, desc=f"tokenizing {source}")
    counts = encoded.with_format(None).select_columns([ROW, CUT])[:]
    kept_rows = len(set(counts[ROW]))
    report = LengthReport(source, rows_in, cut=sum(counts[CUT]), dropped=len(dataset) - kept_rows,
                          max_seq_length=max_length, split_texts=text_rows)
    if kept_rows == 0:
        raise ValueError(f"{source}: every row is longer than --max_seq_length {max_length} and was dropped "
                         "(--drop_long); raise --max_seq_length")
    if report.message():
        logger.warning(report.message())
    return encoded.remove_columns([ROW, CUT]), report


def encode_prompts(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: CausalLMDataArguments, data_format: str,
    max_length: int | None = None,
) -> Dataset:
    """Prompts for generation (evaluation, prediction), rendered as in training: ``prompt`` (text), ``input_ids``
    (left-cut to ``max_length``, default ``--max_seq_length``) and ``reference`` (the last answer, or None where
    the row has none)."""
    renderer = RowRenderer(data_format, data_args, tokenizer)
    bos = leading_special_ids(tokenizer)
    max_length = max_length or data_args.max_seq_length

    def encode(batch: dict) -> dict:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        rendered = [renderer.prompt(row) for row in rows]
        ids = tokenizer([text for text, _, _ in rendered], add_special_tokens=False)["input_ids"]
        ids = [(ids_ if chat else list(bos) + ids_)[-max_length:] for ids_, (_, chat, _) in zip(ids, rendered, strict=True)]
        return {"prompt": [text for text, _, _ in rendered], "input_ids": ids,
                "reference": [reference for _, _, reference in rendered]}

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="rendering prompts")


# -- loading -------------------------------------------------------------------------------------------------------
@dataclass
class CausalLMData:
    """A recipe's data: ``encoded`` train / validation (``input_ids``, ``labels``, ``length``; train packed with
    ``--packing``), ``raw`` splits (test, and references for generation), the row shape, and what
    ``--max_seq_length`` did to each split."""

    encoded: DatasetDict
    raw: DatasetDict
    data_format: str
    reports: dict[str, LengthReport]


def required_columns(data_format: str, data_args: CausalLMDataArguments) -> list[str]:
    """The columns a shape reads (the instruction's input only where its flag was changed: it may be absent)."""
    if data_format == "instruction":
        optional_input = data_args.input_column == "input"
        return [data_args.instruction_column, data_args.output_column] + ([] if optional_input else [data_args.input_column])
    return {"messages": [data_args.messages_column], "text": [data_args.text_column],
            "prompt_completion": [data_args.prompt_column, data_args.completion_column]}[data_format]


def load_causal_lm_data(
    data_args: CausalLMDataArguments, tokenizer: PreTrainedTokenizerBase, seed: int, cache_dir: str | None = None,
) -> CausalLMData:
    """Load the splits, detect the shape from train, check the columns of each split (a test split needs the
    prompt only), hold out a seeded validation split where there is none, keep ``--max_*_samples`` rows, encode
    train and validation, and pack train with ``--packing``. Call :func:`prepare_tokenizer` first."""
    raw = load_data(data_args, cache_dir)
    data_format = detect_format(raw["train"].column_names, data_args, source_name(data_args, "train"))
    logger.info("data format: %s", data_format)
    answer_columns = {"prompt_completion": data_args.completion_column, "instruction": data_args.output_column}
    for split in raw:
        needed = required_columns(data_format, data_args)
        if split == "test" and answer_columns.get(data_format) not in raw[split].column_names:
            needed = [c for c in needed if c != answer_columns.get(data_format)]
        require_columns(raw[split], needed, source_name(data_args, split))
    raw = ensure_validation(raw, None, data_args.validation_split_percentage, seed, stratify=False)
    raw = limit_samples(raw, data_args)
    encoded, reports = DatasetDict(), {}
    for split in ("train", "validation"):
        encoded[split], reports[split] = encode_dataset(raw[split], tokenizer, data_args, data_format,
                                                        source_name(data_args, split))
    if data_args.packing:
        encoded["train"] = pack_examples(encoded["train"], data_args.max_seq_length)
    return CausalLMData(encoded, raw, data_format, reports)


# -- packing and collators ------------------------------------------------------------------------------------------
def plan_packs(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: each example, longest first, goes into the fullest row that still has room for it (a new
    row where none has). Returns the example indices of each row."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        need = lengths[i]
        if need > capacity:
            raise ValueError(f"example {i} has {need} tokens, more than a packed row's {capacity}")
        slot = bisect_left(room, (need, -1))
        if slot == len(room):
            rows.append([i])
            free, row = capacity - need, len(rows) - 1
        else:
            free, row = room.pop(slot)
            rows[row].append(i)
            free -= need
        if free > 0:
            insort(room, (free, row))
    return rows


def pack_examples(dataset: Dataset, max_seq_length: int) -> Dataset:
    """Encoded examples packed into rows of at most ``max_seq_length`` tokens (:func:`plan_packs`), with
    ``position_ids`` restarting at 0 for each example (how :class:`PackedCollator` tells them apart) and the first
    label of each example -100 (the previous example's last token must not learn to predict it)."""
    examples = dataset.with_format(None).select_columns(["input_ids", "labels"])[:]  # plain lists: fast indexing
    all_ids, all_labels = examples["input_ids"], examples["labels"]
    packs = plan_packs([len(ids) for ids in all_ids], max_seq_length)
    columns: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "length": []}
    for pack in packs:
        ids, labels, positions = [], [], []
        for i in pack:
            ids += all_ids[i]
            labels += [IGNORE_INDEX] + list(all_labels[i][1:])
            positions += list(range(len(all_ids[i])))
        columns["input_ids"].append(ids)
        columns["labels"].append(labels)
        columns["position_ids"].append(positions)
        columns["length"].append(len(ids))
    logger.info("packed %d examples into %d rows of at most %d tokens (%.0f%% filled)", len(all_ids), len(packs),
                max_seq_length, 100.0 * sum(columns["length"]) / max(1, len(packs) * max_seq_length))
    return Dataset.from_dict(columns)


def _round_up(length: int, multiple: int | None) -> int:
    return length if not multiple else -(-length // multiple) * multiple


@dataclass
class CausalLMCollator:
    """Dynamic padding to the longest row of the batch (rounded up to ``pad_to_multiple_of``), on the right:
    ``input_ids`` with ``pad_token_id``, ``attention_mask`` 0 and ``labels`` -100 on padding. Other keys of the
    features (``length``) are left out, so a Trainer may keep them (``remove_unused_columns=False``)."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = _round_up(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"])
            labels[row, :n] = torch.as_tensor(feature["labels"])
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class PackedCollator:
    """Batches of packed rows (:func:`pack_examples`), each example attending only to itself.

    transformers 5 derives a block-diagonal mask from ``position_ids`` alone only when there is no attention mask
    *and no cache*; a training forward builds a ``DynamicCache`` whenever ``config.use_cache`` is on (the default),
    and then every example would silently attend to the ones before it in its row. So the separation is explicit:

    - ``sdpa`` (and ``eager``): a 4-D causal block-diagonal ``attention_mask`` per row (bool for sdpa, additive
      float32 for eager), which the models take as it is; padding tokens attend only to themselves.
    - ``flash_attention_*``: the batch flattened into one row without padding, with ``position_ids`` and the
      sequence boundaries (transformers' ``DataCollatorWithFlattening``): the varlen kernels' padding-free path.
      (One flattened row under sdpa would cost a mask quadratic in the batch's tokens: rows of
      ``max_seq_length`` keep it at rows x length^2.)
    """

    pad_token_id: int
    attn_implementation: str = "sdpa"
    pad_to_multiple_of: int | None = None

    def __post_init__(self) -> None:
        name = self.attn_implementation or "sdpa"
        if "flash" in name:
            self.mode = "flatten"
        elif name in ("sdpa", "eager"):
            self.mode = name
        else:
            raise ValueError(f"packing supports attn_implementation sdpa, eager or flash_attention_*, got {name!r}")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if self.mode == "flatten":
            return self._flattened(features)
        width = _round_up(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        batch = CausalLMCollator(self.pad_token_id, self.pad_to_multiple_of)(features)
        position_ids = torch.zeros_like(batch["input_ids"])
        # segment id of every token: examples 0, 1, ... of a row; each padding token its own (negative) segment
        segment = -1 - torch.arange(width).repeat(len(features), 1)
        for row, feature in enumerate(features):
            positions = torch.as_tensor(feature["position_ids"])
            position_ids[row, : len(positions)] = positions
            segment[row, : len(positions)] = torch.cumsum(positions == 0, dim=0) - 1
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        allowed = (segment[:, :, None] == segment[:, None, :]) & causal  # (batch, query, key)
        mask = allowed[:, None]
        if self.mode == "eager":
            mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, torch.finfo(torch.float32).min)
        return {"input_ids": batch["input_ids"], "attention_mask": mask, "position_ids": position_ids,
                "labels": batch["labels"]}

    @staticmethod
    def _flattened(features: list[dict]) -> dict[str, torch.Tensor]:
        examples = []
        for feature in features:
            positions = list(feature.get("position_ids") or range(len(feature["input_ids"])))
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            examples += [{"input_ids": feature["input_ids"][a:b], "labels": feature["labels"][a:b]}
                         for a, b in pairwise(starts)]
        return DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_tensors="pt")(examples)


def count_answer_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens a causal-LM loss averages over in ``batch``: labels other than -100 after the shift by one (as
    Trainer counts ``num_items_in_batch``). Sum it over the micro-batches of an optimizer step (and processes) and
    pass it as ``num_items_in_batch``: the loss is then the mean over answer tokens of the whole step."""
    shifted = batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]
    return int((shifted != IGNORE_INDEX).sum())
