"""A config the project ships says what it does: the step budget (``--min_train_steps``, 250 in every encoder
recipe; none for causal LMs) adds no epoch to any of them, so ``num_train_epochs`` is what the run trains (on one process, as the headers launch it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import TrainingArguments

from ftlib.data.files import load_files
from ftlib.data.token import read_token_file
from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.small_data import budget_epochs
from ftlib.tasks.causal_lm import CausalLMDataArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.object_detection import DetectionDataArguments
from ftlib.tasks.semantic_segmentation import SegmentationDataArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import CausalLMModelArguments, ModelArguments, VisionModelArguments

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs").glob("*/*.yaml"))
DATA_ARGUMENTS = {"text_cls": TextDataArguments, "image_cls": ImageDataArguments, "token_cls": TokenDataArguments,
                  "causal_lm": CausalLMDataArguments, "object_detection": DetectionDataArguments,
                  "semantic_seg": SegmentationDataArguments}
MODEL_ARGUMENTS = {"causal_lm": CausalLMModelArguments, "object_detection": VisionModelArguments,
                   "semantic_seg": VisionModelArguments}

# Training rows of the data that is not in the repository (Hub datasets, ../shared, the digits export), as the dataset
# cards and files give them; the budget only shrinks with more rows, so a lower bound would do.
KNOWN_ROWS = {
    "nyu-mll/glue": 67_349,  # SST-2 train
    "../shared/data/sst2/train.tsv": 67_349,
    "eriktks/conll2003": 14_041,
    "../shared/data/conll2003/train.txt": 14_041,
    "ethz/food101": 75_750,
    "AI-Lab-Makerere/beans": 1_034,
    "sklearn-digits": 1_437 - 144,
    "../shared/data/coco/val2017-panoptic100/images": 100 - 20,  # less the 20% (validation_split_percentage) held out
    "../shared/data/coco/val2017-panoptic100/train.json": 80,  # the set's own split: 80 train, 20 validation
}


def shipped_defaults(recipe: str) -> dict:
    """The recipe's RECIPE_DEFAULTS as shipped (the test session's fixture sets their budget to 0)."""
    spec = importlib.util.spec_from_file_location(f"{recipe}_as_shipped", ROOT / "recipes" / f"{recipe}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RECIPE_DEFAULTS


def training_rows(data_args) -> int:
    """The training rows (for tokens, sentences: a long one becomes several windows, which only adds steps)."""
    train_file = data_args.train_file if hasattr(data_args, "train_file") else None
    source = train_file or getattr(data_args, "dataset_name", None) or getattr(data_args, "image_folder", None)
    if source in KNOWN_ROWS:
        return KNOWN_ROWS[source]
    path = ROOT / source
    if isinstance(data_args, TokenDataArguments):
        return len(read_token_file(path, data_args.tokens_column, data_args.tags_column))
    assert data_args.validation_file, f"{source}: a validation split carved out of train: count it here"
    return len(load_files({"train": str(path)})["train"])


def test_every_recipe_has_a_budget_and_every_config_is_checked():
    assert {config.parent.name for config in CONFIGS} == set(DATA_ARGUMENTS)
    encoders = set(DATA_ARGUMENTS) - {"causal_lm", "object_detection"}
    assert {shipped_defaults(recipe)["min_train_steps"] for recipe in encoders} == {250}
    assert "min_train_steps" not in shipped_defaults("causal_lm")  # nothing measured for decoders: no budget
    assert shipped_defaults("object_detection")["min_train_steps"] == 300  # a fresh DETR head places boxes slowly
    assert len(CONFIGS) == 15


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_the_step_budget_adds_no_epoch_to_a_shipped_config(config):
    recipe = config.parent.name
    _, data_args, ft_args, training_args = parse_args(
        (MODEL_ARGUMENTS.get(recipe, ModelArguments), DATA_ARGUMENTS[recipe], FineTuneArguments, TrainingArguments),
        ["--config", str(config), "--use_cpu", "true"], defaults=shipped_defaults(recipe),  # bf16 configs: GPUs
    )
    rows = training_rows(data_args)
    rows_per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    epochs = training_args.num_train_epochs
    effective = budget_epochs(rows, rows_per_step, epochs, ft_args.min_train_steps)
    assert effective == epochs, (f"{config.relative_to(ROOT)} says num_train_epochs: {epochs:g}, and the step budget "
                                 f"(min_train_steps {ft_args.min_train_steps}, {rows} rows) trains {effective:g}")
