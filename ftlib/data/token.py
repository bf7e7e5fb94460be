"""Token-classification (NER) data: readers, tag schemes, sub-word label alignment, word predictions.

Every reader returns a `datasets.Dataset` with columns `id` (str), `tokens` (list[str]) and `tags`
(list[str]); the CoNLL and JSON-lines readers add `line_numbers` (list[int], 1-based, one per token)
so that errors and predictions can point at the line a token came from.

Typical flow (what `recipes/token_cls.py` does)::

    raw = load_token_data(train_file=..., validation_file=...)
    scheme = detect_scheme(raw["train"]["tags"])
    for split in raw:
        check_tags(raw[split], scheme, source=files[split])
    labels = LabelInfo(SINGLE, label_list(raw))    # also: no tag in validation/test unseen in train
    raw = ensure_validation(raw, None, 10, seed, strata=sentence_strata(raw["train"]["tags"]))  # ftlib.data.labels
    windows = tokenize_dataset(raw["validation"], tokenizer, labels.label2id, max_length=256, stride=32)
    ...                                            # Trainer.predict(windows) -> logits
    pred_tags = words_predictions(logits.argmax(-1), windows, len(raw["validation"]), labels.id2label)
    token_cls_metrics(raw["validation"]["tags"], pred_tags, scheme)  # ftlib.tasks.metrics
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Sequence as HfSequence

from ftlib.data.files import missing_columns_error, read_text_file, require_columns

logger = logging.getLogger(__name__)

Scheme = Literal["IOB1", "BIO", "BIOES", "IO"]
SCHEMES: tuple[str, ...] = ("IOB1", "BIO", "BIOES", "IO")
CONLL_EXTENSIONS = (".txt", ".conll", ".iob", ".bio")
JSON_EXTENSIONS = (".json", ".jsonl")
IGNORE_INDEX = -100  # the label torch's cross-entropy (and the Trainer's collator) skips

_FEATURES = Features(
    {
        "id": Value("string"),
        "tokens": HfSequence(Value("string")),
        "tags": HfSequence(Value("string")),
        "line_numbers": HfSequence(Value("int32")),
    }
)
_FEATURES_NO_LINES = Features({k: v for k, v in _FEATURES.items() if k != "line_numbers"})


def _features(lines: bool, tags: bool) -> Features:
    """The reader's columns: ``line_numbers`` when the lines are known, ``tags`` when the data has them."""
    return Features({k: v for k, v in _FEATURES.items() if (lines or k != "line_numbers") and (tags or k != "tags")})


# --------------------------------------------------------------------------- readers


def _lines(text: str) -> list[str]:
    # split on "\n" only: str.splitlines would also split inside tokens holding \x85 or \u2028
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_conll(path: str | Path, require_tags: bool = True) -> Dataset:
    """Read a CoNLL file: `token<TAB or spaces>tag` a line, blank line between sentences.

    With more than two columns (CoNLL-2003's `token POS chunk tag`) the token is the first column and
    the tag the last. `-DOCSTART-` lines are skipped (and end a sentence). LF or CRLF, UTF-8.
    ``require_tags=False`` (data to predict): a line may hold the token alone; the dataset has a ``tags``
    column only when every token has a tag.
    """
    path = Path(path)
    ids: list[str] = []
    tokens: list[list[str]] = []
    tags: list[list[str]] = []
    lines: list[list[int]] = []
    cur_tok: list[str] = []
    cur_tag: list[str] = []
    cur_line: list[int] = []

    def flush() -> None:
        if cur_tok:
            ids.append(str(len(ids)))
            tokens.append(cur_tok.copy())
            tags.append(cur_tag.copy())
            lines.append(cur_line.copy())
            cur_tok.clear()
            cur_tag.clear()
            cur_line.clear()

    for number, line in enumerate(_lines(read_text_file(path)), start=1):
        if not line.strip():
            flush()
            continue
        # a tab-separated file may hold spaces inside a token; otherwise any run of spaces separates
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        fields = [f for f in fields if f]
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if len(fields) < 2 and require_tags:
            raise ValueError(
                f"{path}, line {number}: expected `token<TAB>tag` (two or more columns), got {line!r}"
            )
        cur_tok.append(fields[0])
        cur_tag.append(fields[-1] if len(fields) > 1 else None)
        cur_line.append(number)
    flush()
    if not tokens:
        raise ValueError(f"{path}: no sentences found (empty file, or only -DOCSTART-/blank lines)")
    columns = {"id": ids, "tokens": tokens, "tags": tags, "line_numbers": lines}
    if any(tag is None for sentence_tags in tags for tag in sentence_tags):
        del columns["tags"]  # some tokens have none (only without require_tags): tokens to predict
    return Dataset.from_dict(columns, features=_features(lines=True, tags="tags" in columns))


def _tags_to_str(tags: Sequence[Any], label_names: Sequence[str] | None, where: str) -> list[str]:
    """Tags as strings: strings kept, ints mapped through `label_names`."""
    if all(isinstance(t, str) for t in tags):
        return list(tags)
    if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in tags):
        if label_names is None:
            raise ValueError(f"{where}: tags are integers; pass label_names (the tag of each id)")
        bad = [int(t) for t in tags if not 0 <= t < len(label_names)]
        if bad:
            raise ValueError(f"{where}: tag id {bad[0]} outside label_names (0..{len(label_names) - 1})")
        return [label_names[int(t)] for t in tags]
    raise ValueError(f"{where}: tags must be all strings or all integers, got {list(tags)!r}")


def read_jsonl(
    path: str | Path,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    label_names: Sequence[str] | None = None,
    require_tags: bool = True,
    keep: Sequence[str] = (),
) -> Dataset:
    """Read JSON lines (or a JSON array) of objects holding a token list and a tag list.

    Integer tags are mapped to strings through `label_names`. `id` is the row's `id` field when present,
    else its index. `line_numbers` repeats the row's line for every token (JSON lines only).
    ``require_tags=False`` (data to predict): rows may lack the tag list; the dataset has a ``tags`` column
    only when every row has one. ``keep``: other fields every row must have, kept as string columns (a document or
    speaker to group sentences by, ``--group_column``).
    """
    path = Path(path)
    text = read_text_file(path)
    rows: list[tuple[int | None, Any]] = []
    if text.lstrip().startswith("["):
        try:
            rows = [(None, r) for r in json.loads(text)]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: invalid JSON: {e.msg}") from None
    else:
        for number, line in enumerate(_lines(text), start=1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {number}: invalid JSON: {e.msg}") from None
    if not rows:
        raise ValueError(f"{path}: no rows found (empty file)")
    with_lines = all(n is not None for n, _ in rows)
    keep = [name for name in keep if name not in _FEATURES]  # "id" is a column already
    out: dict[str, list] = {"id": [], "tokens": [], "tags": [], "line_numbers": [], **{name: [] for name in keep}}
    for index, (number, row) in enumerate(rows):
        where = f"{path}, line {number}" if number is not None else f"{path}, row {index}"
        # a malformed file is a ValueError throughout this module, whatever the cause
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")  # noqa: TRY004
        needed = (tokens_column, tags_column) if require_tags else (tokens_column,)
        missing = [column for column in needed if column not in row] + [name for name in keep if row.get(name) is None]
        if missing:
            raise missing_columns_error(missing, list(row), where)
        toks, tags = row[tokens_column], row.get(tags_column)
        if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
            raise ValueError(f"{where}: {tokens_column!r} must be a list of strings")
        if tags is not None:
            if not isinstance(tags, list):
                raise ValueError(f"{where}: {tags_column!r} must be a list")
            if len(toks) != len(tags):
                raise ValueError(f"{where}: {len(toks)} tokens but {len(tags)} tags")
            tags = _tags_to_str(tags, label_names, where)
        out["id"].append(str(row.get("id", index)))
        out["tokens"].append(toks)
        out["tags"].append(tags)
        out["line_numbers"].append([number] * len(toks) if with_lines else [])
        for name in keep:
            out[name].append(str(row[name]))
    if not with_lines:
        del out["line_numbers"]
    if any(tags is None for tags in out["tags"]):
        del out["tags"]  # some rows have none (only without require_tags): tokens to predict
    features = _features(lines=with_lines, tags="tags" in out)
    return Dataset.from_dict(out, features=Features({**features, **{name: Value("string") for name in keep}}))


def from_hub_columns(
    dataset: Dataset | DatasetDict,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    label_names: Sequence[str] | None = None,
    source: str = "dataset",
    keep: Sequence[str] = (),
) -> Dataset | DatasetDict:
    """Bring a Hub dataset to `id`/`tokens`/`tags` (string tags).

    Integer tags use the names of their `Sequence(ClassLabel)` feature (or `label_names` when the
    feature has none); string tags are kept. Other columns are dropped, but for those in ``keep`` that a split has
    (as strings: a document to group sentences by, ``--group_column``). Errors name `source` (a
    `DatasetDict`'s splits as `source:split`, the way `ftlib.data.files.source_name` does).
    """
    if isinstance(dataset, DatasetDict):
        return DatasetDict(
            {split: from_hub_columns(part, tokens_column, tags_column, label_names, f"{source}:{split}", keep)
             for split, part in dataset.items()}
        )
    require_columns(dataset, [tokens_column, tags_column], source)
    inner = getattr(dataset.features[tags_column], "feature", None)
    names = inner.names if isinstance(inner, ClassLabel) else label_names
    ids = [str(i) for i in dataset["id"]] if "id" in dataset.column_names else None
    tags = [_tags_to_str(row, names, f"{source}, row {i}") for i, row in enumerate(dataset[tags_column])]
    kept = [name for name in keep if name in dataset.column_names and name not in _FEATURES]
    return Dataset.from_dict(
        {
            "id": ids if ids is not None else [str(i) for i in range(len(dataset))],
            "tokens": list(dataset[tokens_column]),
            "tags": tags,
            **{name: [None if v is None else str(v) for v in dataset[name]] for name in kept},
        },
        features=Features({**_FEATURES_NO_LINES, **{name: Value("string") for name in kept}}),
    )


def load_token_data(
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    label_names: Sequence[str] | None = None,
    keep: Sequence[str] = (),
) -> DatasetDict:
    """Read the given files into splits `train`/`validation`/`test`, the reader chosen by extension.

    .txt/.conll/.iob/.bio -> `read_conll`; .json/.jsonl -> `read_jsonl`. ``keep``: fields of the training file kept
    as columns (see :func:`read_jsonl`).
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    splits = {
        split: read_token_file(file, tokens_column, tags_column, label_names, keep=keep if split == "train" else ())
        for split, file in files.items()
        if file is not None
    }
    if not splits:
        raise ValueError("no data file given: pass train_file, validation_file and/or test_file")
    return DatasetDict(splits)


def read_token_file(
    path: str | Path,
    tokens_column: str = "tokens",
    tags_column: str = "tags",
    label_names: Sequence[str] | None = None,
    require_tags: bool = True,
    keep: Sequence[str] = (),
) -> Dataset:
    """One file, the reader chosen by extension: .txt/.conll/.iob/.bio -> `read_conll`; .json/.jsonl -> `read_jsonl`
    (``keep``: fields kept as columns, JSON lines only)."""
    suffix = Path(path).suffix.lower()
    if suffix in CONLL_EXTENSIONS:
        if keep:
            raise ValueError(f"{path}: a CoNLL file has words and tags only, no column {', '.join(map(repr, keep))}; "
                             "give the sentences as JSON lines with that field to group them")
        return read_conll(path, require_tags)
    if suffix in JSON_EXTENSIONS:
        return read_jsonl(path, tokens_column, tags_column, label_names, require_tags, keep)
    raise ValueError(
        f"{path}: unknown extension {suffix!r}; expected one of {', '.join(CONLL_EXTENSIONS + JSON_EXTENSIONS)}"
    )


# --------------------------------------------------------------------------- tag schemes


def _split_tag(tag: str) -> tuple[str, str]:
    """('B', 'PER') for 'B-PER'; ('O', '') for 'O'."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    return (prefix, kind) if sep and kind else (tag, "")


def detect_scheme(tag_lists: Iterable[Sequence[str]]) -> Scheme:
    """The tagging scheme of some tag sequences (one per sentence).

    Rule, in order: any `S-`/`E-` tag -> BIOES; no `B-` tag at all -> IO (indistinguishable from an IOB1
    file without adjacent same-type entities, and scored the same); every `B-X` directly after `I-X` or
    `B-X` (IOB1 uses B- only to split two adjacent entities of one type) -> IOB1; otherwise -> BIO.
    """
    any_b = any_es = False
    b_only_after_same = True
    for tags in tag_lists:
        prev_prefix, prev_kind = "O", ""
        for tag in tags:
            prefix, kind = _split_tag(tag)
            if prefix in ("S", "E"):
                any_es = True
            elif prefix == "B":
                any_b = True
                if not (prev_prefix in ("B", "I") and prev_kind == kind):
                    b_only_after_same = False
            prev_prefix, prev_kind = prefix, kind
    if any_es:
        return "BIOES"
    if not any_b:
        return "IO"
    return "IOB1" if b_only_after_same else "BIO"


_PREFIXES = {"IOB1": {"B", "I"}, "BIO": {"B", "I"}, "BIOES": {"B", "I", "E", "S"}, "IO": {"I"}}


def _rows(dataset: Dataset | Mapping[str, list]) -> Iterable[tuple[int, str, list[str], list[int]]]:
    """(row, id, tags, line_numbers) per example, read column-wise (fast on Arrow datasets)."""
    columns = dataset.column_names if isinstance(dataset, Dataset) else list(dataset)
    tags = list(dataset["tags"])
    ids = list(dataset["id"]) if "id" in columns else [str(i) for i in range(len(tags))]
    lines = list(dataset["line_numbers"]) if "line_numbers" in columns else [[]] * len(tags)
    return zip(range(len(tags)), ids, tags, lines)


def _where(source: str, row: int, example_id: str, lines: Sequence[int], pos: int) -> str:
    """'file, line 12' when the token's line is known, else 'file, row 3 (id ...), token 5'."""
    if pos < len(lines):
        return f"{source}, line {lines[pos]}"
    return f"{source}, row {row} (id {example_id!r}), token {pos + 1}"


def _transition_error(scheme: str, prev: str, tag: str, is_last: bool) -> str | None:
    """Why `tag` cannot follow `prev` ('O' at sentence start) under `scheme`, or None."""
    prefix, kind = _split_tag(tag)
    p_prefix, p_kind = _split_tag(prev)
    continues = p_prefix in ("B", "I") and p_kind == kind
    if scheme == "BIO" and prefix == "I" and not continues:
        return f"I-{kind} must follow B-{kind} or I-{kind} in BIO"
    if scheme == "IOB1" and prefix == "B" and not continues:
        return f"B-{kind} is only used after I-{kind} or B-{kind} in IOB1"
    if scheme == "BIOES":
        if prefix in ("I", "E") and not continues:
            return f"{prefix}-{kind} must follow B-{kind} or I-{kind} in BIOES"
        if prefix in ("B", "S", "O") and p_prefix in ("B", "I"):
            return f"{prev} must be followed by I-{p_kind} or E-{p_kind} in BIOES"
        if is_last and prefix in ("B", "I"):
            return f"a sentence cannot end on {tag} in BIOES (use S-/E-)"
    return None


def check_tags(dataset: Dataset, scheme: Scheme, source: str) -> None:
    """Raise ValueError at the first tag that is malformed or out of sequence for `scheme`.

    The message names `source` (the file), the line (or row/token) and the offending tag.
    Labels are never rewritten: the model learns them as given.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
    allowed = _PREFIXES[scheme]
    for row, example_id, tags, lines in _rows(dataset):
        prev = "O"
        for pos, tag in enumerate(tags):
            prefix, kind = _split_tag(tag)
            if prefix != "O" and (prefix not in allowed or not kind):
                raise ValueError(
                    f"{_where(source, row, example_id, lines, pos)}: tag {tag!r} is not 'O' or one of "
                    f"{sorted(p + '-TYPE' for p in allowed)} ({scheme})"
                )
            reason = _transition_error(scheme, prev, tag, pos == len(tags) - 1)
            if reason:
                raise ValueError(
                    f"{_where(source, row, example_id, lines, pos)}: tag {tag!r} after {prev!r}: {reason}"
                )
            prev = tag


def label_list(
    datasets: DatasetDict | Mapping[str, Dataset], sources: Mapping[str, str] | None = None
) -> list[str]:
    """The train split's tags, sorted with "O" first; a validation/test tag unseen in train is an error.

    `sources` (split -> file name) makes the error name the file as well as the split and line.
    """
    if "train" not in datasets:
        raise ValueError(f"label_list needs a 'train' split; got {list(datasets)}")
    seen = {tag for tags in datasets["train"]["tags"] for tag in tags}
    for split, dataset in datasets.items():
        if split == "train":
            continue
        for row, example_id, tags, lines in _rows(dataset):
            for pos, tag in enumerate(tags):
                if tag not in seen:
                    source = f"split {split!r}" + (
                        f" ({sources[split]})" if sources and split in sources else ""
                    )
                    raise ValueError(
                        f"{_where(source, row, example_id, lines, pos)}: tag {tag!r} does not occur in the train "
                        "split, so the model cannot learn it"
                    )
    return sorted(seen, key=lambda t: (t != "O", t))


def sentence_strata(tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """What to stratify a held-out validation split by, one value per sentence: its most frequent entity type
    (tags' types, whatever the scheme's prefixes; a tie goes to the first in alphabetical order), "O" for a
    sentence without entities. Rare types keep their share of validation sentences, and so do sentences
    without entities."""
    strata = []
    for tags in tag_lists:
        counts: dict[str, int] = {}
        for tag in tags:
            kind = _split_tag(tag)[1]
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
        strata.append(min(counts, key=lambda k: (-counts[k], k)) if counts else "O")
    return strata


# --------------------------------------------------------------------------- sub-word alignment


def _owners(word_ids: Sequence[Sequence[int | None]], mapping: Sequence[int], stride: int) -> list[set[int]]:
    """For each window, the words it labels: every word in exactly one window.

    A word belongs to the window where its first sub-token has the most context, min(tokens to the
    left, tokens to the right) inside the window; ties go to the earlier window (BERT's SQuAD
    "max context" rule). Windows of one example overlap by exactly `stride` content tokens, which
    gives each window's start in the example's full token sequence.
    """
    owners: list[set[int]] = [set() for _ in word_ids]
    start_window = 0
    while start_window < len(word_ids):
        end_window = start_window
        while end_window < len(word_ids) and mapping[end_window] == mapping[start_window]:
            end_window += 1
        # global token position of each window's first content token
        content = [[w for w in word_ids[k] if w is not None] for k in range(start_window, end_window)]
        starts = [0]
        for k in range(1, len(content)):
            if stride and content[k][:stride] != content[k - 1][-stride:]:
                raise RuntimeError("tokenizer windows do not overlap by `stride` tokens as expected")
            starts.append(starts[-1] + len(content[k - 1]) - stride)
        first_pos: dict[int, int] = {}  # word -> global position of its first sub-token
        for start, ids in zip(starts, content):
            for j, w in enumerate(ids):
                first_pos.setdefault(w, start + j)
        best: dict[int, tuple[int, int]] = {}  # word -> (score, window)
        for k, (start, ids) in enumerate(zip(starts, content)):
            for w, g in first_pos.items():
                if start <= g < start + len(ids):
                    score = min(g - start, start + len(ids) - 1 - g)
                    if w not in best or score > best[w][0]:
                        best[w] = (score, k)
        for w, (_, k) in best.items():
            owners[start_window + k].add(w)
        start_window = end_window
    return owners


def tokenize_and_align(
    batch: Mapping[str, list],
    tokenizer: Any,
    label2id: Mapping[str, int],
    max_length: int,
    label_all_subtokens: bool = False,
    stride: int = 0,
    indices: Sequence[int] | None = None,
) -> dict[str, list]:
    """Tokenize pre-split words with a fast tokenizer and give each sub-token its label id.

    For `Dataset.map(batched=True, remove_columns=...)` (it returns more rows than it gets when a
    sentence overflows); `tokenize_dataset` does that call. The first sub-token of a word gets the
    word's tag; the others get -100, or with `label_all_subtokens` the tag too (I-X for a B-X word when
    "I-X" is in `label2id`). Special tokens get -100.

    A sentence longer than `max_length` becomes several windows overlapping by `stride` tokens, so no
    word is lost; a word is labelled in one window only (see `_owners`: the window where it has the
    most context), so the loss and metrics count it once. Extra columns: `example_index` (the source
    row: pass `indices`, i.e. `map(with_indices=True)`, else it is the row within this batch),
    `word_ids` (-1 for special tokens) and `num_words`. The Trainer drops those before the forward
    pass (`remove_unused_columns=True`, its default); `words_predictions` reads them.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenize_and_align needs a fast tokenizer (word_ids); got a slow one")
    if "tags" not in batch:
        raise ValueError(f"batch has no 'tags' column; columns: {sorted(batch)}")
    enc = tokenizer(
        batch["tokens"],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
    )
    mapping = enc.pop("overflow_to_sample_mapping")
    word_ids = [enc.word_ids(k) for k in range(len(enc["input_ids"]))]
    owners = _owners(word_ids, mapping, stride)
    labels: list[list[int]] = []
    for k, ids in enumerate(word_ids):
        tags = batch["tags"][mapping[k]]
        row: list[int] = []
        prev = None
        for w in ids:
            if w is None or w not in owners[k]:
                row.append(IGNORE_INDEX)
            else:
                tag = tags[w]
                if w != prev:
                    row.append(_label_id(label2id, tag))
                elif label_all_subtokens:
                    if tag.startswith("B-") and "I-" + tag[2:] in label2id:
                        tag = "I-" + tag[2:]
                    row.append(_label_id(label2id, tag))
                else:
                    row.append(IGNORE_INDEX)
            prev = w
        labels.append(row)
    out = dict(enc)
    out["labels"] = labels
    out["example_index"] = [indices[m] if indices is not None else m for m in mapping]
    out["word_ids"] = [[-1 if w is None else w for w in ids] for ids in word_ids]
    out["num_words"] = [len(batch["tokens"][m]) for m in mapping]
    return out


def _label_id(label2id: Mapping[str, int], tag: str) -> int:
    try:
        return label2id[tag]
    except KeyError:
        raise ValueError(f"tag {tag!r} is not in label2id ({sorted(label2id)})") from None


def _tokenize_with_indices(batch: Mapping[str, list], indices: list[int], **kwargs: Any) -> dict[str, list]:
    return tokenize_and_align(batch, indices=indices, **kwargs)


def tokenize_dataset(
    dataset: Dataset,
    tokenizer: Any,
    label2id: Mapping[str, int],
    max_length: int,
    label_all_subtokens: bool = False,
    stride: int = 0,
    batch_size: int = 1000,
    num_proc: int | None = None,
) -> Dataset:
    """`tokenize_and_align` over a whole dataset: one row per window, `example_index` global (with `num_proc`
    processes too: each works on a contiguous shard and sees the global row indices)."""
    return dataset.map(
        _tokenize_with_indices,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        num_proc=num_proc,
        remove_columns=dataset.column_names,
        fn_kwargs={
            "tokenizer": tokenizer,
            "label2id": label2id,
            "max_length": max_length,
            "label_all_subtokens": label_all_subtokens,
            "stride": stride,
        },
        desc="Tokenizing and aligning labels",
    )


def words_predictions(
    pred_label_ids: np.ndarray,
    windows: Dataset | Mapping[str, list],
    num_examples: int,
    id2label: Mapping[int, str],
) -> list[list[str]]:
    """The predicted tag of every word of every original sentence.

    `pred_label_ids[k, p]` is the predicted id at position p of window k (Trainer predictions' argmax,
    padding beyond a window's length ignored). A word's tag is read at its first sub-token in the one
    window that labels it (labels != -100). With overflow windows no word is cut; a word that has no
    sub-token at all (the tokenizer dropped it, e.g. a lone control character) gets "O", with a warning
    giving the count.
    """
    example_index = list(windows["example_index"])
    word_ids = list(windows["word_ids"])
    labels = list(windows["labels"])
    num_words = list(windows["num_words"])
    pred_label_ids = np.asarray(pred_label_ids)
    if pred_label_ids.ndim != 2 or pred_label_ids.shape[0] != len(word_ids):
        raise ValueError(
            f"pred_label_ids has shape {pred_label_ids.shape}, expected ({len(word_ids)}, sequence length)"
        )
    out: list[list[str] | None] = [None] * num_examples
    for k, ex in enumerate(example_index):
        if not 0 <= ex < num_examples:
            raise ValueError(f"window {k} has example_index {ex}, outside 0..{num_examples - 1}")
        if out[ex] is None:
            out[ex] = [None] * num_words[k]  # type: ignore[list-item]
        if len(word_ids[k]) > pred_label_ids.shape[1]:
            raise ValueError(
                f"window {k} has {len(word_ids[k])} tokens, predictions only {pred_label_ids.shape[1]}"
            )
        words = out[ex]
        for p, (w, label) in enumerate(zip(word_ids[k], labels[k])):
            if w >= 0 and label != IGNORE_INDEX and words[w] is None:
                words[w] = id2label[int(pred_label_ids[k, p])]
    missing_examples = [i for i, words in enumerate(out) if words is None]
    if missing_examples:
        raise ValueError(
            f"{len(missing_examples)} examples have no window (first: {missing_examples[0]}); was "
            "example_index made per batch? use tokenize_dataset or map(with_indices=True)"
        )
    unpredicted = sum(w is None for words in out for w in words)  # type: ignore[union-attr]
    if unpredicted:
        logger.warning(
            "%d words had no labelled sub-token (dropped by the tokenizer); predicted 'O'", unpredicted
        )
    return [["O" if w is None else w for w in words] for words in out]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- output


def write_conll_predictions(path: str | Path, dataset: Dataset, pred_tags: Sequence[Sequence[str]]) -> None:
    """Write `token<TAB>gold<TAB>predicted` a line (`token<TAB>predicted` when the dataset has no tags), a blank
    line between sentences, in input order."""
    if len(pred_tags) != len(dataset):
        raise ValueError(f"{len(pred_tags)} predicted sentences for {len(dataset)} in the dataset")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    golds = dataset["tags"] if "tags" in dataset.column_names else [None] * len(dataset)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for i, (tokens, gold, pred) in enumerate(zip(dataset["tokens"], golds, pred_tags)):
            if not (len(tokens) == len(gold if gold is not None else tokens) == len(pred)):
                raise ValueError(
                    f"sentence {i}: {len(tokens)} tokens, {len(gold)} gold, {len(pred)} predicted"
                )
            for token, g, p in zip(tokens, gold if gold is not None else [None] * len(tokens), pred):
                f.write(f"{token}\t{p}\n" if g is None else f"{token}\t{g}\t{p}\n")
            f.write("\n")
