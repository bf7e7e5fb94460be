"""Label columns: problem type, label names, ids, a stratified validation split, and the checks that
catch bad labels before training (a single class, a label only validation or test has)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Sequence, Value
from sklearn.model_selection import train_test_split

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
        raise ValueError(f"label column '{column}' has an empty value (row {row})")
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

    def to_id(value, row: int) -> int:
        key = names_of[value] if names_of is not None else str(value)
        if key not in lookup:
            raise ValueError(f"{source}: label '{key}' (row {row}) does not occur in the training data "
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


def stratified_split(dataset: Dataset, column: str, percentage: float, seed: int) -> tuple[Dataset, Dataset]:
    """(train, validation) with ``percentage`` % held out, stratified by label where every class has two rows."""
    labels = [str(v) for v in dataset[column]]
    counts = {label: labels.count(label) for label in set(labels)}
    stratify = labels if min(counts.values()) >= 2 else None
    indices = np.arange(len(dataset))
    train_idx, val_idx = train_test_split(indices, test_size=percentage / 100.0, random_state=seed, stratify=stratify)
    return dataset.select(sorted(train_idx)), dataset.select(sorted(val_idx))


def ensure_validation(data: DatasetDict, column: str, percentage: float, seed: int) -> DatasetDict:
    """Carve a seeded, stratified validation split out of train when there is none."""
    if "validation" in data:
        return data
    data["train"], data["validation"] = stratified_split(data["train"], column, percentage, seed)
    return data
