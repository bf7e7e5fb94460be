"""Every flag a recipe accepts does something in that recipe, or is refused naming it (issue 13, item 3).

The walk: each recipe runs once on tiny data with its ModelArguments, data arguments and FineTuneArguments
instances instrumented, and every dataclass field the run never reads must be accounted for: either it acts
only together with another flag (``GATED``: setting it alone is an error naming both), or the recipe does not
use it at all (``REFUSED``: setting it is an error naming it). Reads that only report a value (the model card's
strategy summary, a printed or saved configuration) do not count as use.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import ModelArguments

# Functions whose reads of an argument only report it (every field, whatever it does).
REPORTING = {"strategy_summary", "_asdict_inner", "asdict", "__repr__", "__eq__", "astuple", "_astuple_inner",
             "effective_config", "to_yaml", "write_config", "config_dict"}

# field -> (the flag it needs, a non-default value, extra argv that makes the gate open): inert without the gate.
GATED = {
    "dataset_config_name": ("--dataset_name", "sst2"),
    "train_split": ("--dataset_name", "training"),
    "validation_split": ("--dataset_name", "dev"),
    "test_split": ("--dataset_name", "eval"),
    "validation_file": ("--train_file", "val.csv"),  # a Hub dataset or an image folder brings its own splits
    "test_file": ("--train_file", "test.csv"),
    "lora_r": ("--lora", "4"),
    "lora_alpha": ("--lora", "8"),
    "lora_dropout": ("--lora", "0.2"),
    "lora_target_modules": ("--lora", "query"),
    "lora_save": ("--lora", "merged"),
    "lora_use_rslora": ("--lora", "true"),
    "lora_use_dora": ("--lora", "true"),
    "loraplus_lr_ratio": ("--lora", "16"),
    "gradual_unfreeze_unit": ("--gradual_unfreeze", "step"),
    "gradual_unfreeze_blocks": ("--gradual_unfreeze", "2"),
    "early_stopping_threshold": ("--early_stopping_patience", "0.01"),
    "torch_optimizer_kwargs": ("--torch_optimizer", '{"momentum": 0.9}'),
    "cv_only": ("--cv_folds", "true"),
    "group_column": ("--cv_folds", "speaker"),
    "lr_find_start": ("--lr_find", "1e-6"),
    "lr_find_end": ("--lr_find", "0.1"),
    "lr_find_steps": ("--lr_find", "50"),
}
GATED_PER_RECIPE = {
    "text_cls": {"head_fraction": ("--truncation", "0.5")},
    "image_cls": {"mixup_prob": ("--mixup_alpha", "0.5")},
    "token_cls": {},
}
# recipe -> {field: a non-default value}: flags the recipe parses (shared dataclasses) but cannot use.
REFUSED = {
    "text_cls": {},
    "image_cls": {},
    "token_cls": {"label_column": "ner"},
}
DATA_ARGS = {"text_cls": TextDataArguments, "image_cls": ImageDataArguments, "token_cls": TokenDataArguments}


def fields_of(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def track(instance, reads: set[str]) -> None:
    """Record the fields of ``instance`` read from now on (outside ``REPORTING`` functions)."""
    names = fields_of(type(instance))

    class Tracked(type(instance)):
        def __getattribute__(self, name):
            if name in names and sys._getframe(1).f_code.co_name not in REPORTING:
                reads.add(name)
            return object.__getattribute__(self, name)

    Tracked.__name__ = type(instance).__name__
    instance.__class__ = Tracked


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def text_data(tmp_path: Path) -> list[str]:
    rows = [{"text": f"{w} film number {i}", "label": lab} for i in range(6) for w, lab in (("great", "pos"), ("awful", "neg"))]
    train = write_csv(tmp_path / "train.csv", rows * 2)
    test = write_csv(tmp_path / "test.csv", rows[:4])
    return ["--train_file", str(train), "--test_file", str(test)]


def image_data(tmp_path: Path) -> list[str]:
    rows = []
    for i in range(12):
        colour, label = ((220, 40, 40), "red") if i % 2 else ((40, 60, 220), "blue")
        Image.new("RGB", (20, 20), colour).save(tmp_path / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "label": label})
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", rows[:4])
    return ["--train_file", str(train), "--test_file", str(test)]


def token_data(tmp_path: Path) -> list[str]:
    sentences = [[("John", "B-PER"), ("visited", "O"), ("Paris", "B-LOC"), (".", "O")],
                 [("Mary", "B-PER"), ("likes", "O"), ("Berlin", "B-LOC"), (".", "O")]] * 6
    text = "".join("".join(f"{w}\t{t}\n" for w, t in s) + "\n" for s in sentences)
    (tmp_path / "train.conll").write_text(text)
    (tmp_path / "test.conll").write_text(text)
    return ["--train_file", str(tmp_path / "train.conll"), "--test_file", str(tmp_path / "test.conll")]


DATA = {"text_cls": text_data, "image_cls": image_data, "token_cls": token_data}


def recipe(name: str):
    import importlib

    return importlib.import_module(name)


def parse(name: str, argv: list[str]):
    types = (ModelArguments, DATA_ARGS[name], FineTuneArguments, TrainingArguments)
    return parse_args(types, argv, defaults=recipe(name).RECIPE_DEFAULTS)


def model_for(name: str, tiny_bert_dir, tiny_vit_dir) -> Path:
    return tiny_vit_dir if name == "image_cls" else tiny_bert_dir


def minimal_argv(name: str, model_dir: Path, tmp_path: Path) -> list[str]:
    data = ["--train_file", "train.csv"] if name != "token_cls" else ["--train_file", "train.conll"]
    return ["--model_name_or_path", str(model_dir), *data, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]


@pytest.mark.parametrize("name", ["text_cls", "image_cls", "token_cls"])
def test_every_field_a_recipe_parses_is_read_or_refused(name, tiny_bert_dir, tiny_vit_dir, tmp_path):
    torch.set_num_threads(1)
    argv = [
        "--model_name_or_path", str(model_for(name, tiny_bert_dir, tiny_vit_dir)), *DATA[name](tmp_path),
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--max_steps", "2", "--save_strategy", "no",
        "--eval_strategy", "no", "--per_device_train_batch_size", "4", "--disable_tqdm", "true",
        "--dataloader_pin_memory", "false", "--dataloader_num_workers", "0", "--report_to", "none",
    ]
    model_args, data_args, ft_args, training_args = parse(name, argv)
    reads: set[str] = set()
    for instance in (model_args, data_args, ft_args):
        track(instance, reads)
    recipe(name).main(model_args, data_args, ft_args, training_args)

    parsed = fields_of(ModelArguments) | fields_of(DATA_ARGS[name]) | fields_of(FineTuneArguments)
    accounted = set(GATED) | set(GATED_PER_RECIPE[name]) | set(REFUSED[name])
    assert sorted(parsed - reads - accounted) == [], "fields this recipe parses, never reads and does not refuse"
    assert sorted(reads & set(REFUSED[name])) == [], "refused fields the recipe reads after all"


REFUSALS = [(name, field, value) for name, fields in REFUSED.items() for field, value in fields.items()]


@pytest.mark.parametrize("name, field, value", REFUSALS, ids=[f"{n}-{f}" for n, f, _ in REFUSALS])
def test_a_flag_the_recipe_cannot_use_is_refused_naming_it(name, field, value, tiny_bert_dir, tiny_vit_dir, tmp_path):
    argv = minimal_argv(name, model_for(name, tiny_bert_dir, tiny_vit_dir), tmp_path)
    with pytest.raises(ValueError, match=f"--{field}"):
        parse(name, [*argv, f"--{field}", value])
    parse(name, argv)  # the default is fine


GATES = [(name, field, gate, value) for name in DATA_ARGS
         for field, (gate, value) in {**GATED, **GATED_PER_RECIPE[name]}.items()
         if field in fields_of(DATA_ARGS[name]) | fields_of(FineTuneArguments)]


@pytest.mark.parametrize("name, field, gate, value", GATES, ids=[f"{n}-{f}" for n, f, _, _ in GATES])
def test_a_flag_without_the_flag_it_needs_is_refused_naming_both(name, field, gate, value, tiny_bert_dir,
                                                                 tiny_vit_dir, tmp_path):
    argv = minimal_argv(name, model_for(name, tiny_bert_dir, tiny_vit_dir), tmp_path)
    if gate == "--train_file":
        argv[argv.index("--train_file"):argv.index("--train_file") + 2] = ["--dataset_name", "some/dataset"]
    values = value.split() if field == "lora_target_modules" else [value]
    with pytest.raises(ValueError, match=rf"--{field}\b.*{gate}\b"):
        parse(name, [*argv, f"--{field}", *values])


def test_preprocessing_workers_tokenize_words_the_same(tiny_bert_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from ftlib.data.token import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = [[f"word{i}", "and", "Paris", "again", "and", "again"] * (1 + i % 5) for i in range(40)]
    data = Dataset.from_dict({"id": [str(i) for i in range(40)], "tokens": words, "tags": [["O"] * len(w) for w in words]})
    one = tokenize_dataset(data, tokenizer, {"O": 0}, max_length=16, stride=4)
    two = tokenize_dataset(data, tokenizer, {"O": 0}, max_length=16, stride=4, num_proc=2)
    assert len(one) > len(data) and one.to_dict() == two.to_dict()  # windows, and example_index global in both


def test_class_weights_refused_for_regression():
    from ftlib.training.trainer import class_weights_from_labels

    with pytest.raises(ValueError, match="--class_weights balanced: the labels are numbers"):
        class_weights_from_labels("balanced", [0.5, 1.5], 1, regression=True)
    assert class_weights_from_labels(None, [0.5, 1.5], 1, regression=True) is None
