"""Data fields every task shares; each task module extends :class:`DataArguments` with its own columns."""

from __future__ import annotations

from dataclasses import dataclass, field

from ftlib.core.options import refuse_without


@dataclass
class DataArguments:
    """Data fields every task shares; each recipe extends it with its own columns."""

    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset name (datasets.load_dataset)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_split: str = field(default="train", metadata={"help": "Split name used for training."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Split used for evaluation ('validation' if the dataset has one)."}
    )
    test_split: str | None = field(default=None, metadata={"help": "Split used for predictions ('test' if present)."})
    train_file: str | None = field(default=None, metadata={"help": "Local training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file."})
    test_file: str | None = field(default=None, metadata={"help": "Local test file (predictions are written for it)."})
    label_column: str = field(default="label", metadata={"help": "Name of the label column."})
    validation_split_percentage: float = field(
        default=10.0,
        metadata={"help": "Without a validation split, hold out this percentage of train (seeded, stratified)."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate training data (debugging, quick runs)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate evaluation data."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Truncate test data."})
    drop_empty: bool = field(
        default=False,
        metadata={"help": "Drop train and validation rows whose input (text, image, words) is empty; without it they "
                          "are counted and warned about, and more than 5% of a split is an error. Test rows are kept."},
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={"help": "Workers preparing the data before training: dataset.map processes (tokenising text and "
                          "words), threads decoding every image once (image classification)."},
    )

    def _source_fields(self) -> tuple[str, ...]:
        """The fields naming where the data comes from; exactly one is given (a recipe may add its own)."""
        return ("dataset_name", "train_file")

    def __post_init__(self) -> None:
        flags = [f"--{name}" for name in self._source_fields()]
        given = [f"--{name}" for name in self._source_fields() if getattr(self, name) is not None]
        if not given:
            raise ValueError(f"give either {' or '.join(flags)}")
        if len(given) > 1:
            raise ValueError(f"give {' or '.join(given)}, not {'both' if len(given) == 2 else 'several'}")
        if not 0.0 < self.validation_split_percentage < 100.0:
            raise ValueError(f"--validation_split_percentage must be in (0, 100), got {self.validation_split_percentage}")
        refuse_without(self, "--dataset_name", self.dataset_name is not None,
                       ("dataset_config_name", "train_split", "validation_split", "test_split"))
        refuse_without(self, "--train_file", self.train_file is not None, ("validation_file", "test_file"))
        if self.preprocessing_num_workers is not None and self.preprocessing_num_workers < 1:
            raise ValueError(f"--preprocessing_num_workers must be >= 1, got {self.preprocessing_num_workers}")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be positive, got {value}")


def tune_thresholds_field():
    """``--tune_thresholds``, the same in every recipe with multi-label classification (text, image)."""
    return field(
        default=None,
        metadata={"help": "Multi-label: tune one decision threshold per label on the validation split at the end of "
                          "training (each label's best F1), saved with the model as thresholds.json and used for the "
                          "test predictions and by ftlib-predict. Unset: on for multi-label; false: 0.5 for every label."},
    )
