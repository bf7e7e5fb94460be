"""Discriminative / layer-wise learning rates read from the optimizer during training, under warmup and the
linear and cosine schedules; no decay on bias and norm; torch.optim and Trainer ``--optim`` optimizers."""

from __future__ import annotations

import math
import re

import pytest
import torch
from transformers import TrainerCallback

from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.optim import resolve_optimizer

BASE, HEAD, DECAY, N_BLOCKS = 1e-3, 4e-3, 0.5, 3
# block k from the top gets BASE * DECAY**k, the embeddings one step below the lowest block
EXPECTED = {
    "embeddings": BASE * DECAY**3,
    "block 0": BASE * DECAY**2,
    "block 1": BASE * DECAY,
    "block 2": BASE,
    "head": HEAD,
}
FT = {"layer_decay": DECAY, "head_learning_rate": HEAD}


class LrRecorder(TrainerCallback):
    """The lr of every parameter group at the start of each optimizer step, as the step will use it."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.optimizer_type = None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer_type = type(getattr(optimizer, "optimizer", optimizer))
        self.steps.append({g["name"]: g["lr"] for g in optimizer.param_groups})


def layer_of(group_name: str) -> str:
    return group_name.removesuffix(" (no decay)")


def linear(step: int, warmup: int, total: int) -> float:
    return step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup))


def cosine(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize("schedule, factor", [("linear", linear), ("cosine", cosine)])
def test_group_lrs_follow_the_schedule_and_keep_their_ratios(schedule, factor, make_core_trainer):
    recorder = LrRecorder()
    trainer = make_core_trainer(
        FineTuneArguments(**FT),
        callbacks=[recorder],
        learning_rate=BASE,
        lr_scheduler_type=schedule,
        warmup_steps=2,
        max_steps=6,
    )
    trainer.train()
    assert len(recorder.steps) == 6
    names = set(recorder.steps[0])
    assert {layer_of(n) for n in names} == set(EXPECTED)
    assert len(names) == 10  # each layer: weights with decay, biases / LayerNorm without
    for step, lrs in enumerate(recorder.steps):
        f = factor(step, 2, 6)
        for name, lr in lrs.items():
            assert lr == pytest.approx(EXPECTED[layer_of(name)] * f, rel=1e-9, abs=1e-15), (step, name)
        if f > 0:  # the ratios between groups hold at every step
            for name, lr in lrs.items():
                assert lr / lrs["head"] == pytest.approx(EXPECTED[layer_of(name)] / HEAD, rel=1e-9)
    assert recorder.steps[0]["head"] == 0.0  # warmup starts at 0
    assert recorder.steps[1]["block 2"] == pytest.approx(BASE / 2)  # half-way through warmup
    assert recorder.steps[2]["head"] == pytest.approx(HEAD)  # warmup done: the configured rates


def test_default_is_one_rate_for_all(make_core_trainer):
    recorder = LrRecorder()
    make_core_trainer(callbacks=[recorder], learning_rate=BASE, max_steps=1).train()
    assert set(recorder.steps[0].values()) == {BASE}


def test_bias_and_layernorm_get_no_weight_decay(make_core_trainer):
    trainer = make_core_trainer(FineTuneArguments(**FT), weight_decay=0.01, max_steps=1)
    trainer.train()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    grouped = []
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            grouped.append(name)
            no_decay = name.endswith("bias") or "LayerNorm" in name
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
            assert group["name"].endswith("(no decay)") == no_decay, name
    assert sorted(grouped) == sorted(names.values())  # every parameter exactly once


def table_rows(printed: str) -> dict[str, list[str]]:
    lines = printed.split("parameter groups:\n", 1)[1].splitlines()
    return {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1:] for line in lines[2:] if line.strip()}


def test_group_table_printed_at_train_start(make_core_trainer, capsys):
    trainer = make_core_trainer(
        FineTuneArguments(freeze_embeddings=True, **FT), learning_rate=BASE, max_steps=1
    )
    capsys.readouterr()
    trainer.train()
    printed = capsys.readouterr().out
    assert "Optimizer AdamW, parameter groups:" in printed
    rows = table_rows(printed)
    # frozen embeddings are not in the optimizer: the table says so, with their size
    assert rows["embeddings: not optimised (frozen)"][:2] == [f"{3136 + 64:,}", "frozen"]
    for layer, lr in EXPECTED.items():
        if layer == "embeddings":
            assert layer not in rows
            continue
        for name in (layer, f"{layer} (no decay)"):
            _params, trainable, shown_lr, _ = rows[name]
            assert trainable == "yes"
            assert float(shown_lr) == pytest.approx(lr, rel=1e-3)
    assert trainer.group_table in printed


TORCH_OPTIMIZERS = {
    "NAdam": {"momentum_decay": 0.005},
    "Adamax": {"eps": 1e-7},
    "Adadelta": {"rho": 0.8},
    "Adagrad": {"lr_decay": 0.01},
    "SGD": {"momentum": 0.9, "nesterov": True},
}


@pytest.mark.parametrize("name", TORCH_OPTIMIZERS)
def test_torch_optimizer_keeps_groups_and_kwargs(name, make_core_trainer):
    import json

    kwargs = TORCH_OPTIMIZERS[name]
    ft = FineTuneArguments(torch_optimizer=name, torch_optimizer_kwargs=json.dumps(kwargs), **FT)
    recorder = LrRecorder()
    trainer = make_core_trainer(ft, callbacks=[recorder], learning_rate=BASE, weight_decay=0.01, max_steps=2)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert recorder.optimizer_type is getattr(torch.optim, name)
    groups = trainer.optimizer.param_groups
    assert len(groups) == 10
    for group in groups:
        assert group["lr"] == pytest.approx(EXPECTED[layer_of(group["name"])])
        assert group["weight_decay"] == (0.0 if "no decay" in group["name"] else 0.01)
        for key, value in kwargs.items():
            assert group[key] == value
    moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert "classifier.weight" in moved and "bert.encoder.layer.0.attention.self.query.weight" in moved
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])


@pytest.mark.parametrize(
    "optim, cls_name, extra",
    [
        ("adamw_torch", "AdamW", {"betas": (0.8, 0.999)}),
        ("adafactor", "Adafactor", {"relative_step": False, "scale_parameter": False}),
        ("sgd", "SGD", {}),
        ("adagrad", "Adagrad", {}),
        ("rmsprop", "RMSprop", {}),
    ],
)
def test_trainer_optim_values_keep_groups(optim, cls_name, extra, make_core_trainer):
    recorder = LrRecorder()
    trainer = make_core_trainer(
        FineTuneArguments(**FT),
        callbacks=[recorder],
        optim=optim,
        learning_rate=BASE,
        adam_beta1=0.8,
        max_steps=2,
    )
    before = trainer.model.classifier.weight.detach().clone()
    trainer.train()
    assert recorder.optimizer_type.__name__ == cls_name
    for lrs in recorder.steps:
        assert lrs == pytest.approx({n: EXPECTED[layer_of(n)] for n in lrs})
    for group in trainer.optimizer.param_groups:
        for key, value in extra.items():
            assert group[key] == value
    assert not torch.equal(before, trainer.model.classifier.weight)


def test_bad_torch_optimizer_lists_choices():
    args = object()  # not consulted when a torch optimizer is named
    with pytest.raises(ValueError, match=r"--torch_optimizer 'Adamw' is not a torch.optim optimizer") as info:
        resolve_optimizer(args, "Adamw", {})
    for choice in ("AdamW", "NAdam", "Adamax", "Adadelta", "Adagrad", "SGD"):
        assert choice in str(info.value)
    with pytest.raises(ValueError, match=r"NAdam takes no argument 'momentum'"):
        resolve_optimizer(args, "NAdam", {"momentum": 0.9})
    with pytest.raises(ValueError, match=r"--torch_optimizer_kwargs.*'lr'.*--learning_rate"):
        resolve_optimizer(args, "SGD", {"lr": 0.1})


def test_bad_torch_optimizer_fails_before_training(make_core_trainer):
    trainer = make_core_trainer(FineTuneArguments(torch_optimizer="Lion"))
    with pytest.raises(ValueError, match="'Lion'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_span_names_joins_consecutive_blocks():
    from ftlib.strategy.optim import span_names

    assert span_names(["head", *(f"block {i}" for i in range(30))]) == "head, blocks 0-29"
    assert span_names(["embeddings", "block 0", "block 2", "block 3", "pooler"]) == "embeddings, block 0, blocks 2-3, pooler"
