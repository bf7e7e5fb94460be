"""Local data files and Hub datasets into a ``DatasetDict``, with errors that name the file at fault."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset

logger = logging.getLogger("ftlib")

# Empty inputs above this share of a split are an error (a wrong column, a broken export), not a warning.
EMPTY_SHARE_LIMIT = 0.05

# extension -> (datasets builder, extra builder kwargs)
BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t", "quoting": csv.QUOTE_NONE}),  # GLUE-style TSV: no quote characters
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def check_text_file(path: Path) -> None:
    """Fail early, naming the file, on a missing, empty or non-UTF-8 file (a ``UnicodeDecodeError`` deep
    inside the csv reader would name neither the file nor the line)."""
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"data file is empty: {path}")
    if path.suffix == ".parquet":
        return
    filled = 0
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            try:
                filled += bool(line.decode("utf-8").strip())
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path} is not UTF-8: line {line_number}, byte {err.start} ({line[err.start:err.start + 4]!r}); "
                    "re-save it as UTF-8"
                ) from None
    header_lines = 1 if path.suffix.lower() in (".csv", ".tsv") else 0
    if filled <= header_lines:
        raise ValueError(f"data file has no rows: {path}")


def read_text_file(path: str | Path) -> str:
    """The text of a UTF-8 data file (a byte-order mark dropped), checked first by :func:`check_text_file`."""
    path = Path(path)
    check_text_file(path)
    return path.read_bytes().decode("utf-8-sig")


def load_files(files: dict[str, str | None], cache_dir: str | None = None) -> DatasetDict:
    """Load local files (csv, tsv, json, jsonl, parquet) by split name; all splits must share a format."""
    files = {split: Path(p) for split, p in files.items() if p}
    suffixes = {p.suffix.lower() for p in files.values()}
    unknown = [str(p) for p in files.values() if p.suffix.lower() not in BUILDERS]
    if unknown:
        raise ValueError(f"unsupported file type: {', '.join(unknown)} (use {', '.join(BUILDERS)})")
    if len({(BUILDERS[s][0], tuple(BUILDERS[s][1].items())) for s in suffixes}) > 1:
        raise ValueError(f"all data files must have one format, got {', '.join(sorted(suffixes))}")
    for path in files.values():
        check_text_file(path)
    builder, kwargs = BUILDERS[next(iter(suffixes))]
    data = DatasetDict()
    for split, path in files.items():
        try:
            loaded = load_dataset(builder, data_files={split: str(path)}, cache_dir=cache_dir, **kwargs)[split]
        except Exception as err:  # noqa: BLE001 - pyarrow / pandas parse errors name neither file nor split
            raise ValueError(f"cannot parse {path}: {err}") from None
        if len(loaded) == 0:
            raise ValueError(f"data file has no rows: {path}")
        data[split] = loaded
    return data


def load_hub(name: str, config: str | None, splits: dict[str, str | None], cache_dir: str | None = None) -> DatasetDict:
    """Load named splits of a Hub dataset; a split that does not exist is an error listing those that do."""
    raw = load_dataset(name, config, cache_dir=cache_dir)
    data = DatasetDict()
    for role, split in splits.items():
        if split is None:
            continue
        if split not in raw:
            raise ValueError(f"dataset {name} has no split '{split}' (it has {', '.join(raw)})")
        data[role] = raw[split]
    return data


def source_name(data_args, role: str) -> str:
    """How to name a split in messages: its file path, its image folder, or dataset:split."""
    path = getattr(data_args, f"{role}_file", None)
    if path:
        return str(path)
    folder = getattr(data_args, "image_folder", None)
    if folder:
        return f"{folder} ({role})"
    return f"{data_args.dataset_name}:{role}"


def missing_columns_error(missing: Sequence[str], columns: Sequence[str], source: str) -> ValueError:
    """The error for columns (or keys of a JSON row) that are not there, naming them and those that are."""
    return ValueError(f"{source}: no column {', '.join(map(repr, missing))}; the columns are {', '.join(columns)}")


def require_columns(dataset: Dataset, columns: list[str], source: str) -> None:
    """A missing column is an error naming it and the columns that exist."""
    missing = [c for c in columns if c and c not in dataset.column_names]
    if missing:
        raise missing_columns_error(missing, dataset.column_names, source)


def load_data(data_args, cache_dir: str | None = None) -> DatasetDict:
    """The train / validation / test splits the arguments name, as ``DatasetDict`` keys of those names."""
    if data_args.train_file:
        return load_files(
            {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file},
            cache_dir,
        )
    splits = {"train": data_args.train_split, "validation": data_args.validation_split, "test": data_args.test_split}
    raw_names = None
    if data_args.validation_split is None or data_args.test_split is None:
        from datasets import get_dataset_split_names

        raw_names = get_dataset_split_names(data_args.dataset_name, data_args.dataset_config_name)
        if splits["validation"] is None:
            splits["validation"] = next((s for s in ("validation", "valid", "dev") if s in raw_names), None)
        if splits["test"] is None and "test" in raw_names:
            splits["test"] = "test"
    return load_hub(data_args.dataset_name, data_args.dataset_config_name, splits, cache_dir)


def limit_samples(data: DatasetDict, data_args) -> DatasetDict:
    """The first ``--max_train_samples`` / ``--max_eval_samples`` / ``--max_predict_samples`` rows of each split."""
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
              "test": data_args.max_predict_samples}
    for split, limit in limits.items():
        if split in data and limit is not None:
            data[split] = data[split].select(range(min(limit, len(data[split]))))
    return data


def is_empty(value: Any) -> bool:
    """An input with nothing in it: a missing cell, a blank string, an empty word list, an image with neither
    bytes nor a path."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, dict):
        return not value.get("bytes") and not value.get("path")
    if isinstance(value, (list, tuple)):
        return len(value) == 0
    return False


def empty_rows(dataset: Dataset, columns: Sequence[str | None], batch_size: int = 1000) -> list[int]:
    """Indices of the rows where any of ``columns`` (those the dataset has) is empty (see :func:`is_empty`)."""
    columns = [c for c in columns if c and c in dataset.column_names]
    if not columns:
        return []
    plain = dataset.select_columns(columns).with_format(None)
    rows = []
    for start in range(0, len(plain), batch_size):  # batches: an image column may hold bytes
        batch = plain[start : start + batch_size]
        for offset in range(len(batch[columns[0]])):
            if any(is_empty(batch[c][offset]) for c in columns):
                rows.append(start + offset)
    return rows


def check_empty_inputs(raw: DatasetDict, columns: Sequence[str | None], data_args, what: str) -> DatasetDict:
    """Count the rows of each split whose input ``columns`` are empty and say so: a warning with the count and
    the first data rows (1 = the first row under a header); an error when they are more than
    ``EMPTY_SHARE_LIMIT`` of a split, or all of it. With ``--drop_empty`` train and validation rows are dropped
    (test rows are kept: each still gets a prediction)."""
    named = " / ".join(f"'{c}'" for c in columns if c)
    drop_empty = data_args.drop_empty
    for split in list(raw):
        rows = empty_rows(raw[split], columns)
        if not rows:
            continue
        n, total = len(rows), len(raw[split])
        source = source_name(data_args, split)
        first = ", ".join(str(r + 1) for r in rows[:10]) + (", ..." if n > 10 else "")
        where = f"{n} of {total} rows have an empty {what} ({named}; data row{'s' if n > 1 else ''} {first})"
        drop = drop_empty and split != "test"
        if n == total:
            raise ValueError(f"{source}: every row has an empty {what} ({named}); is that the right column?")
        if drop:
            empty = set(rows)
            raw[split] = raw[split].select([i for i in range(total) if i not in empty])
            logger.warning("%s: %s; dropped (--drop_empty)", source, where)
        elif n > EMPTY_SHARE_LIMIT * total:
            raise ValueError(
                f"{source}: {where}, more than {EMPTY_SHARE_LIMIT:.0%} of the split; check the column, or pass "
                "--drop_empty to train without them"
            )
        else:
            keep = "kept: each gets a prediction" if split == "test" else "--drop_empty drops them"
            logger.warning("%s: %s and go in as empty input (%s)", source, where, keep)
    return raw
