"""The effective configuration: every run writes config.yaml (all arguments, defaults included) that
reproduces it with --config, --print_config prints it without loading anything, and no token is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import image_cls
import pytest
import text_cls
import token_cls
import yaml
from test_text_cls import base_argv, run, sentiment_rows, write_csv
from transformers import TrainingArguments

from ftlib.outputs.integrity import verify_manifest
from ftlib.run.cli import config_yaml, effective_config, parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import ModelArguments

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "text": (TextDataArguments, text_cls.RECIPE_DEFAULTS, ["--train_file", "t.csv", "--text_column", "sentence"]),
    "image": (ImageDataArguments, image_cls.RECIPE_DEFAULTS, ["--image_folder", "imgs"]),
    "token": (TokenDataArguments, token_cls.RECIPE_DEFAULTS, ["--train_file", "t.conll"]),
}


def parse(recipe: str, argv: list[str]):
    data_cls, defaults, _ = RECIPES[recipe]
    return parse_args((ModelArguments, data_cls, FineTuneArguments, TrainingArguments), argv, defaults=defaults)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_saved_config_reproduces_the_arguments(recipe, tmp_path):
    argv = ["--model_name_or_path", "some/model", *RECIPES[recipe][2], "--output_dir", str(tmp_path / "out"),
            "--learning_rate", "3e-5", "--layer_decay", "0.7", "--freeze_patterns", "a", "b", "--report_to",
            "tensorboard", "--lr_scheduler_kwargs", '{"power": 2.0}', "--hub_token", "hf_SECRET_TOKEN"]
    first = parse(recipe, argv)
    text = config_yaml(first)
    assert "hf_SECRET_TOKEN" not in text and "hub_token" not in yaml.safe_load(text)
    (tmp_path / "config.yaml").write_text(text)
    again = parse(recipe, ["--config", str(tmp_path / "config.yaml")])
    assert effective_config(again) == effective_config(first)
    config = yaml.safe_load(text)
    # defaults included: the recipe's own and the dataclasses'
    for key, value in RECIPES[recipe][1].items():
        if key not in ("report_to", "learning_rate", "layer_decay"):  # set on the command line above
            assert config[key] == value, key
    assert config["learning_rate"] == 3e-5 and config["freeze_patterns"] == ["a", "b"]
    assert config["lr_scheduler_kwargs"] == {"power": 2.0} and config["report_to"] == ["tensorboard"]
    assert config["seed"] == 42 and config["max_grad_norm"] == 1.0  # TrainingArguments' own defaults


def test_print_config_prints_and_exits_before_anything_loads(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "text_cls.py"), "--model_name_or_path", "no/such-model",
         "--train_file", str(tmp_path / "missing.csv"), "--output_dir", str(out), "--min_train_steps", "123",
         "--print_config"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["min_train_steps"] == 123 and printed["model_name_or_path"] == "no/such-model"
    assert printed["learning_rate"] == text_cls.RECIPE_DEFAULTS["learning_rate"]
    assert not out.exists()  # no output directory, no data, no model


def test_run_writes_config_yaml_that_reproduces_it(tiny_bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(2))
    out = tmp_path / "out"
    run(base_argv(tiny_bert_dir, train, out, "--num_train_epochs", "1", "--layer_decay", "0.8", "--hub_token",
                  "hf_SECRET_TOKEN"))
    text = (out / "config.yaml").read_text()
    assert "hf_SECRET_TOKEN" not in text
    config = yaml.safe_load(text)
    assert config["layer_decay"] == 0.8 and config["model_name_or_path"] == str(tiny_bert_dir)
    assert config["num_train_epochs"] == 1 and config["freeze_embeddings"] is False
    assert "config.yaml" in json.loads((out / "MANIFEST.sha256.json").read_text())["files"]
    assert verify_manifest(out) == []
    # the saved config, with another output directory, parses to the same arguments
    again = parse("text", ["--config", str(out / "config.yaml"), "--output_dir", str(tmp_path / "again")])
    first = effective_config(again)
    assert {k: v for k, v in first.items() if "dir" not in k} == {
        k: v for k, v in config.items() if "dir" not in k
    }
