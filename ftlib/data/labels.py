"""Label columns: problem type, label names, ids, a stratified validation split, and the checks that
catch bad labels before training (a single class, a label only validation or test has)."""

from __future__ import annotations

from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value
from sklearn.model_selection import train_test_split

from ftlib.data.files import limit_samples, require_columns, source_name

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"
REGRESSION = "regression"


@dataclass
class LabelInfo:
    problem_type: str
    names: list[str]  # empty for regression

    @property
    def num_labels(self) -> int:
        return 1 if self.problem_type == REGRESSION else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def _as_list(value, separator: str | None) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None and separator:
        return []  # an empty cell of separated labels (csv readers give None for ""): no label
    if separator and isinstance(value, str):
        return [v.strip() for v in value.split(separator) if v.strip()]
    return [value]


def detect_problem_type(dataset: Dataset, column: str, separator: str | None = None) -> str:
    feature = dataset.features[column]
    if isinstance(feature, (Sequence, list)) or separator:
        return MULTI
    if isinstance(feature, Value) and feature.dtype.startswith("float"):
        return REGRESSION
    return SINGLE


def label_names(dataset: Dataset, column: str, problem_type: str, separator: str | None = None) -> list[str]:
    """Names in a stable order: a ClassLabel's own order, else sorted (numbers numerically)."""
    feature = dataset.features[column]
    inner = feature.feature if isinstance(feature, Sequence) else (feature[0] if isinstance(feature, list) else feature)
    if isinstance(inner, ClassLabel):
        return list(inner.names)
    values = dataset[column]
    if problem_type == MULTI:
        values = [v for row in values for v in _as_list(row, separator)]
    if any(v is None for v in values):
        row = values.index(None)
        raise ValueError(f"label column '{column}' has an empty value (data row {row + 1})")
    unique = set(values)
    ordered = sorted(unique) if all(isinstance(v, str) for v in unique) else sorted(unique, key=float)
    return [str(v) for v in ordered]


def infer_labels(
    train: Dataset, column: str, source: str, problem_type: str | None = None, separator: str | None = None
) -> LabelInfo:
    """Problem type and label names from the training split; a single class is an error."""
    problem_type = problem_type or detect_problem_type(train, column, separator)
    if problem_type == REGRESSION:
        return LabelInfo(REGRESSION, [])
    names = label_names(train, column, problem_type, separator)
    if len(names) < 2:
        raise ValueError(f"{source}: column '{column}' has a single class ({names[0] if names else 'none'}); "
                         "classification needs at least two")
    return LabelInfo(problem_type, names)


def encode_labels(dataset: Dataset, column: str, info: LabelInfo, source: str, separator: str | None = None) -> Dataset:
    """Replace ``column`` with a ``labels`` column of ids (int), multi-hot vectors, or floats.

    A label the training split never had is an error naming it, the split's source and the row."""
    feature = dataset.features[column]
    inner = feature.feature if isinstance(feature, Sequence) else feature
    names_of = inner.names if isinstance(inner, ClassLabel) else None
    lookup = info.label2id

    if column != "labels" and info.problem_type == SINGLE and names_of is not None and list(names_of) == info.names:
        present = dataset.select_columns([column]).unique(column)
        if all(0 <= v < len(names_of) for v in present):
            # The ClassLabel ids are already ours: rename rather than rewrite every column (image bytes too).
            return dataset.rename_column(column, "labels")

    def to_id(value, row: int) -> int:
        key = names_of[value] if names_of is not None else str(value)
        if key not in lookup:
            raise ValueError(f"{source}: label '{key}' (data row {row + 1}) does not occur in the training data "
                             f"(training labels: {', '.join(info.names)})")
        return lookup[key]

    def encode(batch, indices):
        values = batch[column]
        if info.problem_type == REGRESSION:
            out = [float(v) for v in values]
        elif info.problem_type == MULTI:
            out = []
            for value, row in zip(values, indices):
                hot = np.zeros(len(info.names), dtype=np.float32)
                for v in _as_list(value, separator):
                    hot[to_id(v, row)] = 1.0
                out.append(hot.tolist())
        else:
            out = [to_id(v, row) for v, row in zip(values, indices)]
        return {"labels": out}

    return dataset.map(encode, batched=True, with_indices=True, remove_columns=[column] if column != "labels" else [],
                       desc=f"labels of {source}")


def stratified_split(
    dataset: Dataset, column: str | None, percentage: float, seed: int, stratify: bool = True,
    strata: AbcSequence | None = None,
) -> tuple[Dataset, Dataset]:
    """(train, validation) with ``percentage`` % held out, seeded; stratified by label (or by ``strata``, one value
    per row, where a row has no single label: a sentence's entity type) when ``stratify`` and the split can hold
    every class (each class has two rows, each side at least one row per class)."""
    labels = [str(v) for v in (dataset[column] if strata is None else strata)]
    counts = {label: labels.count(label) for label in set(labels)}
    n_val = int(np.ceil(len(labels) * percentage / 100.0))
    feasible = min(counts.values()) >= 2 and len(counts) <= min(n_val, len(labels) - n_val)
    stratify = labels if stratify and feasible else None
    indices = np.arange(len(dataset))
    train_idx, val_idx = train_test_split(indices, test_size=percentage / 100.0, random_state=seed, stratify=stratify)
    return dataset.select(sorted(train_idx)), dataset.select(sorted(val_idx))


def ensure_validation(data: DatasetDict, column: str | None, percentage: float, seed: int, stratify: bool = True,
                      strata: AbcSequence | None = None) -> DatasetDict:
    """Carve a seeded (stratified for classification) validation split out of train when there is none; ``strata``:
    what to stratify by instead of ``column``, one value per training row."""
    if "validation" in data:
        return data
    data["train"], data["validation"] = stratified_split(data["train"], column, percentage, seed, stratify, strata)
    return data


def prepare_splits(
    raw: DatasetDict,
    data_args,
    columns: list[str | None],
    seed: int,
    problem_type: str | None = None,
    separator: str | None = None,
) -> tuple[DatasetDict, LabelInfo]:
    """The label steps of every classification recipe once its splits are loaded: check ``columns`` and the
    label column (a test split may lack it), infer the problem type and names from train, carve a seeded
    validation split when there is none (stratified unless regression), keep the first ``--max_*_samples``
    rows, and encode the labels into a ``labels`` column. Returns ``(splits, label info)``."""
    label_column = data_args.label_column
    for split in raw:
        needed = list(columns)
        if split != "test" or label_column in raw[split].column_names:
            needed.append(label_column)
        require_columns(raw[split], needed, source_name(data_args, split))
    labels = infer_labels(raw["train"], label_column, source_name(data_args, "train"), problem_type, separator)
    raw = ensure_validation(raw, label_column, data_args.validation_split_percentage, seed,
                            stratify=labels.problem_type != REGRESSION)
    raw = limit_samples(raw, data_args)
    for split in raw:
        if label_column in raw[split].column_names:
            raw[split] = encode_labels(raw[split], label_column, labels, source_name(data_args, split), separator)
    return raw, labels
