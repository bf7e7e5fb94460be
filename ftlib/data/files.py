"""Local data files and Hub datasets into a ``DatasetDict``, with errors that name the file at fault."""

from __future__ import annotations

import csv
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

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


def require_columns(dataset: Dataset, columns: list[str], source: str) -> None:
    """A missing column is an error naming it and the columns that exist."""
    missing = [c for c in columns if c and c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{source}: no column {', '.join(map(repr, missing))}; the columns are {', '.join(dataset.column_names)}"
        )


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
