"""YAML file -> defaults, command line -> overrides, unknown keys fail naming the key.

``HfArgumentParser.parse_yaml_file`` alone ignores the command line, and ``set_defaults`` would skip
argparse's type conversion. So the YAML mapping is turned into ``--key value`` tokens placed *before*
the command line: argparse converts and checks every value, and the last occurrence of a flag wins.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ftlib.core.options import option_name

logger = logging.getLogger("ftlib")

# A recipe default must not silently cancel a strategy the user turned on: {strategy field: fields whose
# *recipe* default is withdrawn (back to the dataclass default) while the strategy is on and the user did
# not set them in the YAML or on the command line}. Gradual unfreezing (ULMFiT) thaws the embeddings last;
# the text recipe's frozen-embeddings default would cancel that stage. A value the user sets always wins.
STRATEGY_OVER_RECIPE_DEFAULTS = {"gradual_unfreeze": ("freeze_embeddings",)}


class ConfigError(ValueError):
    """A bad config file or command-line argument."""


class _Parser(HfArgumentParser):
    def error(self, message: str):  # argparse would print and sys.exit(2); tests and callers want an exception
        raise ConfigError(message)


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of argument names to values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of argument names to values, got {type(data).__name__}")
    return data


def _as_tokens(key: str, value: Any, action: argparse.Action, source: Path) -> list[str]:
    if value is None:
        return []
    takes_list = action.nargs in ("+", "*")
    # "--key=value": argparse would read a separate "-1e-05" (a YAML float) as an option and fail
    if isinstance(value, dict):
        return [f"--{key}={json.dumps(value)}"]
    if isinstance(value, (list, tuple)):
        if not takes_list and len(value) <= 1:
            # TrainingArguments turns some single values into lists (report_to, fsdp): a saved config holds them so
            return [f"--{key}={_scalar(value[0])}"] if value else []
        if not takes_list:
            raise ConfigError(f"{source}: key '{key}' takes a single value, got a list {value!r}")
        if not value:
            return []  # an empty list: the default (argparse cannot take "--key" with no values)
        return [f"--{key}", *(_scalar(v) for v in value)]
    return [f"--{key}={_scalar(value)}"]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def config_to_argv(config: dict[str, Any], parser: argparse.ArgumentParser, source: Path) -> list[str]:
    """Turn a config mapping into argv tokens; an unknown key is an error naming it."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    for key, value in config.items():
        if key not in actions:
            known = sorted(k for k in actions if k != "help")
            close = [k for k in known if k.startswith(str(key)[:4])][:5]
            hint = f" (did you mean: {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}")
        tokens += _as_tokens(key, value, actions[key], source)
    return tokens


def _pop_config(argv: list[str]) -> tuple[str | None, list[str]]:
    for i, token in enumerate(argv):
        if token == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file path")
            return argv[i + 1], argv[:i] + argv[i + 2 :]
        if token.startswith("--config="):
            return token.split("=", 1)[1], argv[:i] + argv[i + 1 :]
    return None, argv


def parse_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> tuple:
    """Parse ``--config file.yaml`` plus command-line overrides into one instance per dataclass.

    ``defaults`` are a recipe's own defaults (e.g. length grouping for text); the YAML file overrides
    them and the command line overrides both. ``--print_config`` prints the merged result as YAML
    (:func:`config_yaml`) and exits.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, argv = _pop_config(argv)
    print_config = "--print_config" in argv  # print the merged configuration and exit: nothing loads
    argv = [token for token in argv if token != "--print_config"]
    parser = _Parser(dataclass_types)
    if defaults:
        parser.set_defaults(**defaults)
    tokens: list[str] = []
    if config_path is not None:
        tokens = config_to_argv(load_config(config_path), parser, Path(config_path))
    parsed = _parse(parser, tokens + argv, config_path)
    explicit = explicit_keys(dataclass_types, tokens + argv)  # set by the YAML or the command line
    withdrawn = _withdrawn_defaults(dataclass_types, parsed, defaults or {}, explicit)
    if withdrawn:
        parser.set_defaults(**withdrawn)
        parsed = _parse(parser, tokens + argv, config_path)
    for instance in parsed:
        if isinstance(instance, TrainingArguments):
            _unset_implied_loss_metric(instance, explicit | set(defaults or {}))
            check_training_args(instance)
    if print_config:
        print(config_yaml(parsed), end="")
        raise SystemExit(0)
    return parsed


# Never written to a config file or printed: a token in config.yaml would be pushed with the model.
SECRET_FIELDS = ("hub_token",)


def effective_config(instances: Sequence[Any]) -> dict[str, Any]:
    """Every field of the parsed dataclasses (defaults included), as plain YAML values: what the run uses.
    ``--config`` on this mapping reproduces the arguments; secrets (``SECRET_FIELDS``) are left out."""
    config: dict[str, Any] = {}
    for instance in instances:
        for f in dataclasses.fields(instance):
            if not f.init or f.name in SECRET_FIELDS:
                continue
            config[f.name] = _plain(getattr(instance, f.name))
    return config


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_yaml(instances: Sequence[Any]) -> str:
    """:func:`effective_config` as YAML, one key a line, in the order of the dataclasses' fields."""
    header = "# The effective configuration of this run (all arguments, defaults included).\n"
    header += "# Reproduce it with: --config config.yaml (command-line flags override it).\n"
    return header + yaml.safe_dump(effective_config(instances), sort_keys=False, allow_unicode=True)


# Keys that may differ between a checkpoint's config.yaml and the run that resumes from it (see
# :func:`config_changes`); any other difference needs --allow_config_change. Keep this list short.
RESUMABLE_KEYS = frozenset({
    # where and how the run is started (the checkpoint may be copied elsewhere)
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "allow_config_change", "cache_dir", "local_rank",
    # a longer run: extend the training
    "num_train_epochs", "max_steps",
    # logging and progress display
    "logging_strategy", "logging_steps", "logging_first_step", "log_level", "log_level_replica", "log_on_each_node",
    "disable_tqdm", "report_to", "run_name", "project", "skip_memory_metrics",
    # evaluation batch size and data loading workers (results are the same)
    "per_device_eval_batch_size", "eval_accumulation_steps", "preprocessing_num_workers", "dataloader_num_workers",
    "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    # pushing the final model (checkpoints are never pushed)
    "push_to_hub", "hub_model_id", "hub_private_repo", "hub_strategy", "hub_always_push", "hub_revision",
    "push_min_metric", "save_total_limit",
    # the cross-validation before the final training (the final model does not depend on it; it never resumes)
    "cv_folds", "cv_only", "group_column",
})


def config_changes(saved: str, current: str) -> dict[str, tuple[Any, Any]]:
    """``{key: (saved value, current value)}`` for the keys outside :data:`RESUMABLE_KEYS` whose values differ
    between two :func:`config_yaml` texts. A key only one of them has (a field added or removed between ftlib
    versions) is not a change."""
    old, new = yaml.safe_load(saved) or {}, yaml.safe_load(current) or {}
    return {key: (old[key], new[key]) for key in new
            if key in old and key not in RESUMABLE_KEYS and old[key] != new[key]}


def _parse(parser: _Parser, args: list[str], config_path: str | None) -> tuple:
    try:
        return tuple(parser.parse_args_into_dataclasses(args=args))
    except ConfigError as err:
        where = f" (from {config_path} or the command line)" if config_path else ""
        raise ConfigError(f"{err}{where}") from None
    except ValueError as err:
        if "Some specified arguments are not used" in str(err):
            raise ConfigError(str(err)) from None
        raise
    except ImportError as err:  # TrainingArguments(deepspeed=...) without the package: a version-check traceback
        if "deepspeed" not in str(err).lower():
            raise
        # TrainingArguments registered its half-built DeepSpeed config as transformers' global one before the check
        # failed: left there, every later model load in this process asks it for is_zero3() and fails.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        from ftlib.run.launch import deepspeed_missing

        unset_hf_deepspeed_config()

        raise ConfigError(deepspeed_missing("--deepspeed")) from None


def explicit_keys(dataclass_types: Sequence[type], args: Sequence[str]) -> set[str]:
    """The argument names that ``args`` (YAML tokens and command line, ``--config`` removed) set explicitly,
    whatever the value: a default repeated by the user counts as the user's choice."""
    parser = _Parser(dataclass_types)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    namespace, _ = parser.parse_known_args(list(args))
    return set(vars(namespace))


def _withdrawn_defaults(
    dataclass_types: Sequence[type], parsed: tuple, defaults: dict[str, Any], explicit: set[str]
) -> dict[str, Any]:
    """Recipe defaults that a strategy the user turned on overrides (see ``STRATEGY_OVER_RECIPE_DEFAULTS``),
    mapped to their dataclass defaults."""
    candidates = {
        name: strategy
        for strategy, names in STRATEGY_OVER_RECIPE_DEFAULTS.items()
        for name in names
        if name in defaults and any(getattr(instance, strategy, None) for instance in parsed)
    }
    if not candidates:
        return {}
    field_defaults = {
        f.name: f.default for cls in dataclass_types if dataclasses.is_dataclass(cls) for f in dataclasses.fields(cls)
    }
    withdrawn = {name: field_defaults[name] for name in candidates if name not in explicit and name in field_defaults}
    for name, value in withdrawn.items():
        logger.info(
            "--%s: the recipe default %s=%s is not applied (%s=%s); set --%s to choose it",
            candidates[name], name, defaults[name], name, value, name,
        )
    return withdrawn


def _unset_implied_loss_metric(training_args: TrainingArguments, chosen: set[str]) -> None:
    """TrainingArguments fills ``metric_for_best_model="loss"`` in whenever ``--load_best_model_at_end`` is on and the
    metric is not given, so the best checkpoint was chosen on the validation loss while the recipe's headline metric
    (accuracy, F1; ``ftlib.run.steps.set_best_metric``) applied only without it. Unset what the user did not choose, so the
    recipe's default applies to the best checkpoint too (``chosen``: the names the YAML, the command line or the
    recipe's defaults set). Not for schedulers that step on the metric (they were built for a loss)."""
    if training_args.metric_for_best_model != "loss" or not training_args.load_best_model_at_end:
        return
    if option_name(training_args.lr_scheduler_type) in ("reduce_lr_on_plateau", "greedy"):
        return
    if "metric_for_best_model" in chosen:
        return
    training_args.metric_for_best_model = None
    if "greater_is_better" not in chosen:
        training_args.greater_is_better = None


def check_training_args(training_args: TrainingArguments) -> None:
    """Values ``TrainingArguments`` accepts (transformers 5 does not check them) but no run can use: a batch
    size of 0 or -1 fails only when the data loader is built, after the model and data are loaded, and a
    negative learning rate trains backwards."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        value = getattr(training_args, name)
        if value < 1:
            raise ConfigError(f"--{name} must be >= 1, got {value}")
    if training_args.learning_rate < 0:
        raise ConfigError(f"--learning_rate must be >= 0, got {training_args.learning_rate}")
