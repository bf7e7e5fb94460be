"""YAML defaults + command-line overrides, and bad arguments failing before anything loads, naming the
flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transformers import TrainingArguments

from ftlib.core.options import option_name
from ftlib.run.cli import ConfigError, check_training_args, parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.training.arguments import ModelArguments

TYPES = (ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments)
REQUIRED = [
    "--model_name_or_path",
    "tiny",
    "--train_file",
    "train.csv",
    "--report_to",
    "none",
    "--use_cpu",
    "true",
]


def parse(argv: list[str], config: dict | None = None, tmp_path: Path | None = None, defaults=None):
    if config is not None:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        argv = ["--config", str(path), *argv]
    return parse_args(TYPES, argv, defaults=defaults)


YAML = {
    "model_name_or_path": "tiny",
    "train_file": "train.csv",
    "output_dir": "out",
    "learning_rate": "3e-5",
    "num_train_epochs": 2,
    "freeze_patterns": ["attention", "LayerNorm"],
    "freeze_embeddings": True,
    "lr_scheduler_type": "cosine",
    "lr_scheduler_kwargs": {"num_cycles": 0.25},
    "report_to": "none",
    "use_cpu": True,
    "weight_decay": 0.02,
}


def test_yaml_gives_defaults(tmp_path):
    model, data, ft, training = parse([], YAML, tmp_path)
    assert model.model_name_or_path == "tiny" and data.train_file == "train.csv"
    assert training.learning_rate == 3e-5
    assert training.num_train_epochs == 2.0
    assert ft.freeze_patterns == ["attention", "LayerNorm"]
    assert ft.freeze_embeddings is True
    assert str(training.lr_scheduler_type.value) == "cosine"
    assert training.lr_scheduler_kwargs == {"num_cycles": 0.25}
    assert training.weight_decay == 0.02


def test_command_line_wins_over_yaml(tmp_path):
    argv = [
        "--learning_rate",
        "1e-4",
        "--freeze_patterns",
        "query",
        "value",
        "key",
        "--freeze_embeddings",
        "false",
        "--lr_scheduler_kwargs",
        '{"num_cycles": 1.5}',
        "--layer_decay",
        "0.8",
    ]
    _model, _data, ft, training = parse(argv, YAML, tmp_path)
    assert training.learning_rate == 1e-4
    assert ft.freeze_patterns == ["query", "value", "key"]
    assert ft.freeze_embeddings is False
    assert training.lr_scheduler_kwargs == {"num_cycles": 1.5}
    assert ft.layer_decay == 0.8
    assert training.num_train_epochs == 2.0  # untouched keys keep the YAML value


def test_config_equals_form_and_recipe_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in YAML.items() if k != "weight_decay"}))
    *_, training = parse_args(TYPES, [f"--config={path}"], defaults={"weight_decay": 0.05, "warmup_steps": 3})
    assert training.weight_decay == 0.05 and training.warmup_steps == 3  # recipe default, not in the YAML
    *_, training = parse([], YAML, tmp_path, defaults={"weight_decay": 0.05})
    assert training.weight_decay == 0.02  # the YAML overrides the recipe default
    *_, training = parse(["--weight_decay", "0.1"], YAML, tmp_path, defaults={"weight_decay": 0.05})
    assert training.weight_decay == 0.1  # the command line overrides both


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse([], {**YAML, "learnin_rate": 1e-3}, tmp_path)
    message = str(info.value)
    assert "unknown key 'learnin_rate'" in message
    assert str(tmp_path / "run.yaml") in message
    assert "learning_rate" in message  # the suggestion


def test_unknown_command_line_flag_fails():
    with pytest.raises(ConfigError, match="--learnin_rate"):
        parse_args(TYPES, [*REQUIRED, "--learnin_rate", "1e-3"])


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("learning_rate", "abc", r"--learning_rate\b.*: invalid float value: 'abc'"),
        ("per_device_train_batch_size", "x", r"--per_device_train_batch_size\b.*: invalid int value: 'x'"),
        ("gradual_unfreeze_unit", "batch", r"--gradual_unfreeze_unit\b.*: invalid choice: 'batch'"),
        ("learning_rate", [1e-3, 2e-3], r"key 'learning_rate' takes a single value"),
    ],
)
def test_wrong_type_in_yaml_names_the_argument(key, value, pattern, tmp_path):
    with pytest.raises(ConfigError, match=pattern) as info:
        parse([], {**YAML, key: value}, tmp_path)
    assert "run.yaml" in str(info.value)


@pytest.mark.parametrize(
    "key, value, pattern",
    [
        ("learning_rate", -1e-5, r"--learning_rate must be >= 0, got -1e-05"),
        ("head_learning_rate", -0.001, r"--head_learning_rate must be positive, got -0.001"),
        ("layer_decay", -0.5, r"--layer_decay must be in \(0, 1\], got -0.5"),
        ("per_device_train_batch_size", 0, r"--per_device_train_batch_size must be >= 1, got 0"),
    ],
)
def test_bad_values_in_yaml_fail_naming_them(key, value, pattern, tmp_path):
    # a negative float such as -1e-05 must reach the check, not be mistaken for a command-line option
    with pytest.raises(ValueError, match=pattern):
        parse([], {**YAML, key: value}, tmp_path)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        parse_args(TYPES, ["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_args(TYPES, ["--config", str(tmp_path / "list.yaml")])
    with pytest.raises(ConfigError, match="--config needs a file path"):
        parse_args(TYPES, ["--config"])


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--layer_decay", "0"], r"--layer_decay must be in \(0, 1\], got 0.0"),
        (["--layer_decay", "1.5"], r"--layer_decay must be in \(0, 1\], got 1.5"),
        (["--layer_decay", "-1"], r"--layer_decay must be in \(0, 1\], got -1.0"),
        (["--layer_decay", "nan"], r"--layer_decay must be in \(0, 1\], got nan"),
        (["--head_learning_rate", "0"], r"--head_learning_rate must be positive, got 0.0"),
        (["--head_learning_rate=-1e-3"], r"--head_learning_rate must be positive, got -0.001"),
        (
            ["--freeze_lower_blocks", "2", "--head_only", "true"],
            r"choose one of --freeze_lower_blocks / --head_only",
        ),
        (
            ["--train_top_blocks", "1", "--gradual_unfreeze", "1"],
            r"choose one of --train_top_blocks / --gradual_unfreeze",
        ),
        (["--freeze_lower_blocks", "-1"], r"--freeze_lower_blocks must be >= 0"),
        (["--torch_optimizer_kwargs", "{momentum: 0.9}"], r"--torch_optimizer_kwargs is not valid JSON"),
        (["--torch_optimizer_kwargs", "[0.9]"], r"--torch_optimizer_kwargs must be a JSON object"),
        (["--class_weights", "1,x"], r"--class_weights must be 'balanced' or comma-separated numbers"),
        (["--class_weights", "1,0"], r"--class_weights must all be positive"),
        (["--lora_r", "0"], r"--lora_r must be positive"),
        (["--early_stopping_patience", "0"], r"--early_stopping_patience must be >= 1"),
        (["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size must be >= 1, got 0"),
        (["--per_device_train_batch_size", "-4"], r"--per_device_train_batch_size must be >= 1, got -4"),
        (["--per_device_eval_batch_size", "0"], r"--per_device_eval_batch_size must be >= 1, got 0"),
        (["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be >= 1, got 0"),
        (["--learning_rate=-1e-5"], r"--learning_rate must be >= 0, got -1e-05"),
    ],
)
def test_bad_arguments_fail_naming_them(argv, pattern):
    with pytest.raises(ValueError, match=pattern):
        parse_args(TYPES, [*REQUIRED, *argv])


def test_transformers_accepts_bad_batch_sizes_so_ftlib_checks(tmp_path):
    # the reason for check_training_args: TrainingArguments itself lets these through
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=0, report_to="none", use_cpu=True
    )
    assert args.per_device_train_batch_size == 0
    with pytest.raises(ConfigError, match="--per_device_train_batch_size"):
        check_training_args(args)


def test_good_strategy_arguments_parse():
    *_, ft, _ = parse_args(
        TYPES,
        [
            *REQUIRED,
            "--layer_decay",
            "1",
            "--head_learning_rate",
            "1e-3",
            "--torch_optimizer",
            "SGD",
            "--torch_optimizer_kwargs",
            '{"momentum": 0.9}',
            "--class_weights",
            "1,2.5",
            "--lora",
            "true",
        ],
    )
    assert ft.layer_decay == 1.0 and ft.head_learning_rate == 1e-3
    assert ft.optimizer_kwargs == {"momentum": 0.9}
    assert ft.class_weights == "1,2.5" and ft.lora is True


def test_recipe_default_does_not_cancel_gradual_unfreezing(tmp_path):
    """The text recipe freezes the embeddings by default; with --gradual_unfreeze (and no freeze_embeddings of
    the user's own) they thaw last, as ULMFiT does. A value the user sets, in the YAML or on the command line,
    wins, whichever it is."""
    import text_cls

    def frozen(argv, config=None):
        return parse(argv, config, tmp_path, defaults=text_cls.RECIPE_DEFAULTS)[2].freeze_embeddings

    assert text_cls.RECIPE_DEFAULTS["freeze_embeddings"] is True
    assert frozen(REQUIRED) is True  # the recipe default, no strategy in its way
    assert frozen([*REQUIRED, "--gradual_unfreeze", "1"]) is False
    assert frozen([*REQUIRED, "--gradual_unfreeze", "1", "--freeze_embeddings"]) is True
    assert frozen([*REQUIRED, "--gradual_unfreeze", "1", "--freeze_embeddings", "true"]) is True
    yaml_config = {**YAML, "gradual_unfreeze": 1, "freeze_patterns": None}
    assert frozen([], yaml_config) is True  # YAML sets freeze_embeddings: true
    assert frozen([], {k: v for k, v in yaml_config.items() if k != "freeze_embeddings"}) is False
    assert frozen(["--freeze_embeddings", "false"], yaml_config) is False
    assert parse([*REQUIRED, "--gradual_unfreeze", "1"])[2].freeze_embeddings is False  # no recipe defaults


def test_best_checkpoint_metric_is_left_to_the_recipe_unless_chosen(tmp_path):
    """TrainingArguments sets metric_for_best_model='loss' whenever --load_best_model_at_end is on; the recipes'
    headline metric (set_best_metric) must still apply, and a metric or direction the user gave must stay."""
    from ftlib.run.steps import set_best_metric

    best = ["--output_dir", str(tmp_path), "--eval_strategy", "epoch", "--save_strategy", "epoch",
            "--load_best_model_at_end", "true"]
    args = parse([*REQUIRED, *best])[3]
    assert (args.metric_for_best_model, args.greater_is_better) == (None, None)
    set_best_metric(args, "accuracy", True)
    assert (args.metric_for_best_model, args.greater_is_better) == ("accuracy", True)

    chosen = parse([*REQUIRED, *best, "--metric_for_best_model", "loss"])[3]  # the user's own choice, even "loss"
    assert (chosen.metric_for_best_model, chosen.greater_is_better) == ("loss", False)
    from_yaml = parse(best, {"model_name_or_path": "tiny", "train_file": "train.csv", "use_cpu": True,
                             "metric_for_best_model": "eval_loss"}, tmp_path)[3]
    assert from_yaml.metric_for_best_model == "eval_loss"
    direction = parse([*REQUIRED, *best, "--greater_is_better", "false"])[3]
    assert (direction.metric_for_best_model, direction.greater_is_better) == (None, False)
    plateau = parse([*REQUIRED, *best, "--lr_scheduler_type", "reduce_lr_on_plateau"])[3]
    assert plateau.metric_for_best_model == "loss"  # the scheduler steps on it
    without = parse([*REQUIRED, "--output_dir", str(tmp_path)])[3]
    assert without.metric_for_best_model is None


def test_option_names_read_the_same_from_parsed_enums_and_plain_strings():
    args = parse(REQUIRED + ["--optim", "adafactor", "--lr_scheduler_type", "cosine"])[-1]
    assert (option_name(args.optim), option_name(args.lr_scheduler_type)) == ("adafactor", "cosine")
    assert option_name(args.parallel_mode) == "not_parallel"
    args.optim = "sgd"  # set after parsing, as code may
    assert option_name(args.optim) == "sgd"
