"""The task interface (ftlib/tasks/base.py): every task registered once, what the shared code asks of it, the
recipe's defaults one call away for a notebook, and shared modules that never name a task."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from transformers import TrainingArguments

from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.base import Task
from ftlib.tasks.registry import TASKS

ROOT = Path(__file__).resolve().parents[1]


def test_every_task_is_registered_under_its_name_with_a_complete_interface():
    assert set(TASKS) >= {"text", "image", "token"}
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name
        fields = {f.name for f in dataclasses.fields(task.data_arguments)}
        assert set(task.predict_settings) <= fields, name  # ftlib-predict takes them from the run's config.yaml
        assert all(s.startswith(".") for s in task.output_suffixes)
        assert task.auto_model.startswith("AutoModelFor")
    # a run's config.yaml says which task wrote it: no task's data fields are another's
    field_sets = [frozenset(f.name for f in dataclasses.fields(t.data_arguments)) for t in TASKS.values()]
    assert len(set(field_sets)) == len(field_sets)
    for task in TASKS.values():
        recorded = {f.name: None for f in dataclasses.fields(task.data_arguments)}
        assert [t.name for t in TASKS.values() if t.wrote(recorded)] == [task.name]


@pytest.mark.parametrize("recipe", ["text_cls", "image_cls", "token_cls", "causal_lm", "semantic_seg"])
def test_the_recipe_trains_with_its_task_defaults(recipe):
    import importlib

    module = importlib.import_module(recipe)
    shipped = {**module.RECIPE_DEFAULTS, "min_train_steps": module.TASK.defaults.get("min_train_steps")}
    assert {k: v for k, v in shipped.items() if v is not None} == dict(module.TASK.defaults)  # one place: the task
    # (the test session sets the recipes' step budget to 0 on their copies: tests/conftest.py)


def test_task_strategy_gives_a_notebook_the_recipes_defaults_split_into_the_two_argument_classes(tmp_path):
    text = TASKS["text"]
    ft_args, training_kwargs = text.strategy(learning_rate=3e-5)
    assert isinstance(ft_args, FineTuneArguments)
    assert ft_args.freeze_embeddings is True and ft_args.layer_decay == 0.9 and ft_args.head_learning_rate == 1e-3
    assert training_kwargs["learning_rate"] == 3e-5 and training_kwargs["train_sampling_strategy"] == "group_by_length"
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **training_kwargs)
    assert args.num_train_epochs == 3 and args.warmup_steps == 0.1
    image_ft, image_kwargs = TASKS["image"].strategy()
    assert image_ft.batch_norm == "frozen" and image_ft.compare_head_only == "small" and image_kwargs["learning_rate"] == 5e-4


def test_shared_modules_name_no_task():
    """Running, predicting, pushing and the strategy core ask the task (``Task``), never which one it is."""
    task_words = re.compile(r"\"(text|image|token|causal_lm)\"|(text|image|tokens)_column|For(Sequence|Token|Image)"
                            r"Classification\b|For(CausalLM)\b")
    offenders = []
    for package in ("strategy", "training", "run"):
        for path in (ROOT / "ftlib" / package).glob("*.py"):
            if path.name.startswith("convert_") or path.name == "decoder.py":  # about one kind of model, not a task
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#")[0]
                if task_words.search(code) and not code.strip().startswith(('"""', "``")):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    predict = (ROOT / "ftlib" / "outputs" / "predict.py").read_text(encoding="utf-8")
    offenders += [f"outputs/predict.py: {line.strip()}" for line in predict.split('"""', 2)[2].splitlines()
                  if task_words.search(line.split("#")[0]) and "``" not in line]
    assert not offenders, "\n".join(offenders)
