"""The console (ftlib.training.tracking.ConsoleView): the progress output prints the loss, the gradient norm, the head's and the
base learning rate and the headline metrics; trainer_state.json keeps every per-group rate and per-class score."""

from __future__ import annotations

import ast
import json

import pytest

from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.metrics import compute_metrics_fn
from ftlib.training.tracking import ConsoleProgressCallback, ConsoleView, class_names

pytestmark = pytest.mark.usefixtures("one_thread")

# the demo's 14 rates: MiniLM's 6 blocks and the head, with and without weight decay (the embeddings are frozen)
RATES = {f"lr/block_{i}{suffix}": 1e-4 * 0.9 ** (5 - i) for i in range(6) for suffix in ("", "_no_decay")}
TRAINING_LOG = {"loss": 0.5, "grad_norm": 2.0, "learning_rate": 5.9e-5, "epoch": 0.5, **RATES, "lr/head": 1e-3,
                "lr/head_no_decay": 1e-3, "unfreeze/stage": 2}
EVAL_LOG = {"eval_loss": 0.7, "eval_accuracy": 0.75, "eval_macro_f1": 0.7, "eval_precision_neg": 0.5,
            "eval_recall_neg": 1.0, "eval_f1_neg": 0.667, "eval_precision_pos": 1.0, "eval_recall_pos": 0.5,
            "eval_f1_pos": 0.667, "eval_runtime": 0.1, "eval_samples_per_second": 80.0, "eval_steps_per_second": 10.0,
            "epoch": 1.0}


def test_a_training_log_shows_the_loss_the_two_rates_and_the_grad_norm():
    view = ConsoleView(base_key="lr/block_5", classes=class_names({0: "neg", 1: "pos"}))
    assert view(TRAINING_LOG) == {"loss": 0.5, "grad_norm": 2.0, "lr/head": 1e-3, "lr/base": 1e-4, "epoch": 0.5,
                                  "unfreeze/stage": 2}
    assert len(TRAINING_LOG) == 19  # untouched
    # a head-only run has no block group: the head's rate alone
    assert view({"loss": 1.0, "learning_rate": 1e-3, "lr/head": 1e-3}) == {"loss": 1.0, "lr/head": 1e-3}
    # groups that are not ftlib's (no head, no top block): Trainer's learning_rate stays
    assert view({"loss": 1.0, "learning_rate": 1e-3, "lr/group_0": 1e-3}) == {"loss": 1.0, "learning_rate": 1e-3}


def test_an_evaluation_shows_the_headline_metrics():
    view = ConsoleView(base_key="lr/block_5", classes=class_names({0: "neg", 1: "pos"}))
    assert view(EVAL_LOG) == {"eval_loss": 0.7, "eval_accuracy": 0.75, "eval_macro_f1": 0.7, "epoch": 1.0}
    # tokens: scores per entity type, the overall ones stay
    tags = class_names({0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"})
    assert {"PER", "LOC"} <= tags
    token_log = {"eval_loss": 0.3, "eval_precision": 0.8, "eval_recall": 0.7, "eval_f1": 0.75, "eval_accuracy": 0.9,
                 "eval_PER_precision": 1.0, "eval_PER_recall": 1.0, "eval_PER_f1": 1.0, "eval_PER_support": 3,
                 "eval_LOC_f1": 0.5, "eval_runtime": 0.2, "epoch": 2.0}
    assert ConsoleView(classes=tags)(token_log) == {"eval_loss": 0.3, "eval_precision": 0.8, "eval_recall": 0.7,
                                                    "eval_f1": 0.75, "eval_accuracy": 0.9, "epoch": 2.0}
    # the end-of-training summary is printed as it is
    summary = {"train_runtime": 3.0, "train_samples_per_second": 5.0, "train_loss": 0.4, "epoch": 2.0}
    assert ConsoleView(classes=tags)(summary) == summary


def printed_dicts(text: str) -> list[dict]:
    return [ast.literal_eval(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("disable_tqdm", [True, False], ids=["printer", "progress bar"])
def test_training_prints_short_lines_and_keeps_every_key_in_trainer_state(make_core_trainer, core_data, capsys,
                                                                         tmp_path, disable_tqdm):
    labels = {0: "neg", 1: "pos"}
    trainer = make_core_trainer(
        FineTuneArguments(head_learning_rate=1e-3, layer_decay=0.5), eval=core_data(8, seed=1),
        config={"id2label": labels, "label2id": {v: k for k, v in labels.items()}},
        learning_rate=1e-2, max_steps=2, logging_strategy="steps", logging_steps=1, eval_strategy="steps",
        eval_steps=2, disable_tqdm=disable_tqdm,
    )
    trainer.compute_metrics = compute_metrics_fn("single_label_classification", list(labels.values()))
    assert disable_tqdm or any(isinstance(cb, ConsoleProgressCallback) for cb in trainer.callback_handler.callbacks)
    capsys.readouterr()
    trainer.train()
    printed = printed_dicts(capsys.readouterr().out)
    steps = [line for line in printed if "loss" in line]
    evals = [line for line in printed if "eval_loss" in line]
    assert len(steps) == 2 and len(evals) == 1
    for line in steps:
        assert set(line) == {"loss", "grad_norm", "lr/head", "lr/base", "epoch"}
    assert set(evals[0]) == {"eval_loss", "eval_accuracy", "eval_macro_f1", "epoch"}

    trainer.save_state()
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    logged = [row for row in history if "loss" in row]
    rates = {key for key in logged[0] if key.startswith("lr/")}
    assert {"lr/head", "lr/block_2", "lr/block_0", "lr/embeddings"} <= rates and len(rates) == 10
    for line, row in zip(steps, logged):  # the printed rates are the head's and the top block's
        assert float(line["lr/head"]) == pytest.approx(row["lr/head"], rel=1e-3)
        assert float(line["lr/base"]) == pytest.approx(row["lr/block_2"], rel=1e-3)
    assert float(steps[0]["lr/head"]) == pytest.approx(1e-3, rel=1e-3)  # constant schedule: the flags' rates
    assert float(steps[0]["lr/base"]) == pytest.approx(1e-2, rel=1e-3)
    assert logged[0]["learning_rate"] == pytest.approx(1e-2 * 0.5**3)  # Trainer's: the embeddings', 3 blocks down
    evaluated = next(row for row in history if "eval_loss" in row)
    assert {"eval_f1_neg", "eval_precision_pos", "eval_recall_pos", "eval_runtime"} <= set(evaluated)
