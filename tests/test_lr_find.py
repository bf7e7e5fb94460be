"""The learning-rate range test (issue 12, part 3): ``ftlib.run.lr_find.lr_find`` and every recipe's ``--lr_find``.

The known-answer problem: least squares on the rows of an 8x8 Hadamard matrix H (H^T H = 8 I), one copy of H per
batch of 8 (sequential sampling) with fresh noise on the targets. Each batch's loss is ``|w - w*|^2 + noise``: its
Hessian is 2 I, so plain SGD (no momentum, no clipping) converges fastest at lr 0.5 (one step to the noise floor)
and diverges above lr 1.0, where the error grows by |1 - 2 lr| per step.
"""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_flags import DATA, model_for, parse, recipe
from torch import nn
from transformers import Trainer, TrainingArguments

from ftlib.run.lr_find import (
    LRFindResult,
    lr_find,
    plot_destination,
    plot_lr_find,
    smooth,
    suggest_learning_rate,
    suggested_flags,
)
from ftlib.strategy.arguments import FineTuneArguments


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


class LeastSquares(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(d))

    def forward(self, x, labels=None):
        pred = x @ self.weight
        return {"loss": ((pred - labels) ** 2).mean(), "logits": pred}


def hadamard_rows(copies: int = 32, d: int = 8, noise: float = 0.5, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    w = torch.randn(d, generator=g)
    rows = []
    for _ in range(copies):
        y = h @ w + noise * torch.randn(d, generator=g)
        rows += [{"x": h[i], "labels": y[i]} for i in range(d)]
    return rows


def quadratic_trainer(tmp_path) -> Trainer:
    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to="none", optim="sgd", learning_rate=1.0,
                             per_device_train_batch_size=8, max_grad_norm=0.0, disable_tqdm=True,
                             train_sampling_strategy="sequential")
    return Trainer(model=LeastSquares(), args=args, train_dataset=hadamard_rows())


# -- the suggestion -----------------------------------------------------------------------------------------------

def test_smoothing_is_a_bias_corrected_moving_average():
    assert smooth([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    assert smooth([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.5 * 0.5 + 0.5 * 3.0) / (1 - 0.5**2)])


def test_the_suggestion_is_the_minimum_over_ten_before_divergence():
    rates = [10 ** (-6 + k * 0.25) for k in range(20)]
    losses = [1.0 - 0.04 * k for k in range(12)] + [0.7, 0.9, 1.5, 9.0]  # lowest at index 11, diverged at 15
    rate, minimum, reason = suggest_learning_rate(rates[:16], losses, diverged_at=15)
    assert minimum == rates[11] and rate == pytest.approx(rates[11] / 10) and "/ 10" in reason
    # a sweep that diverged after 3 rates: too little to go on, and it says where to start instead
    rate, _, reason = suggest_learning_rate(rates[:4], [1.0, 0.9, 0.8, 50.0], diverged_at=3)
    assert rate is None and "diverged at 5.6e-06" in reason and "--lr_find_start 1e-09" in reason
    # the loss only rose, or stayed flat: nothing to read, and both causes named
    for losses in ([1.0 + k / 10 for k in range(8)], [1.0, 0.999, 1.0, 0.998, 1.0, 0.999, 1.0, 0.997]):
        rate, minimum, reason = suggest_learning_rate(rates[:8], losses)
        assert rate is None and minimum == rates[int(np.argmin(losses))] and "never fell 1% below" in reason
        assert "--lr_find_start 1e-09" in reason and "nothing learns at these rates" in reason


def test_suggestion_lands_in_the_known_range_of_a_quadratic(tmp_path):
    result = lr_find(quadratic_trainer(tmp_path), 1e-4, 10.0, 100)
    # the sweep stopped soon after crossing the stability limit (1.0), not before it
    assert result.diverged_at is not None and 1.0 < result.rates[result.diverged_at] < 3.0
    assert all(math.isfinite(x) for x in result.losses[: result.diverged_at])
    # raw loss lowest where SGD converges fastest (0.5 is one step to the floor), not past the limit
    assert 0.1 < result.rates[int(np.argmin(result.losses))] < 1.0
    # the suggestion trains stably (below 1.0) and within a decade of the fastest rate (0.5)
    assert 0.05 <= result.suggestion < 0.5
    # pinned: the smoothed minimum at step 81 (1.1: the smoothed curve lags the raw one), a tenth of it
    assert result.rates.index(result.minimum) == 80 and result.diverged_at == 85 and result.suggestion == pytest.approx(0.10975, rel=1e-3)
    assert result.group_ratios and all(r == 1.0 for r in result.group_ratios.values())


def test_a_sweep_that_starts_above_the_limit_says_it_cannot_suggest(tmp_path):
    result = lr_find(quadratic_trainer(tmp_path), 3.0, 100.0, 50)
    assert result.diverged_at is not None and result.diverged_at < 5
    assert result.suggestion is None and "start the sweep lower" in result.reason
    png = plot_lr_find(result, tmp_path / "diverged.png")  # the plot still draws (title: no suggestion)
    assert np.asarray(Image.open(png)).std() > 0


def test_a_sweep_that_diverges_midway_suggests_from_before(tmp_path):
    result = lr_find(quadratic_trainer(tmp_path), 1e-2, 1e3, 60)
    assert result.diverged_at is not None and result.diverged_at < len(result.rates) and result.rates[-1] < 10
    assert result.suggestion is not None and 0.05 <= result.suggestion < 0.5


# -- no trace, ratios held ----------------------------------------------------------------------------------------

def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


STRATEGIES = {
    "layer_decay_frozen_embeddings": {"layer_decay": 0.5, "head_learning_rate": 5e-2, "freeze_embeddings": True},
    "lora": {"lora": True, "lora_r": 4, "layer_decay": 0.8},
    "gradual_unfreeze": {"gradual_unfreeze": 1, "gradual_unfreeze_unit": "step", "layer_decay": 0.7},
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_sweep_leaves_no_trace_and_holds_the_group_ratios(strategy, make_core_trainer, core_data, monkeypatch):
    ft = FineTuneArguments(**STRATEGIES[strategy])
    settings = {"learning_rate": 1e-2, "max_steps": 3, "train": core_data(16)}

    def build():  # the same LoRA initialisation, then the same RNG state for training
        torch.manual_seed(0)
        built = make_core_trainer(ft, **settings)
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)
        return built

    trainer = build()
    model = trainer.model
    before = _weights(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rng = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())

    seen: list[tuple[list[float], dict[str, bool]]] = []
    step = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):  # each sweep step: the group rates and which parameters train
        seen.append(([g["lr"] for g in self.param_groups], {n: p.requires_grad for n, p in model.named_parameters()}))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    result = lr_find(trainer, 1e-6, 10.0, 20)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)

    # the sweep trained (the loss moved) with every group scaled by the same factor
    assert len(seen) >= 10 and max(result.losses) - min(result.losses) > 1e-3
    ratios = list(result.group_ratios.values())
    assert len(set(ratios)) > 1  # layer-wise rates: the groups differ
    for (rates, _), base in zip(seen, result.rates):
        assert [lr / base for lr in rates] == pytest.approx(ratios, rel=1e-9)
    if strategy == "layer_decay_frozen_embeddings":
        assert max(ratios) == pytest.approx(5.0) and min(ratios) == pytest.approx(0.5**2)  # head 5e-2/1e-2; block 0
    if strategy == "gradual_unfreeze":  # the whole staged model trains in the sweep, not only the head
        assert all(seen[0][1][n] for n, flag in flags.items() if flag)

    # no trace: weights, requires_grad, gradients, optimizer, RNG
    after = _weights(model)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert trainer.optimizer is None and trainer.lr_scheduler is None and trainer.state.global_step == 0
    assert random.getstate() == rng[0] and np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])

    # and training afterwards is exactly the training of a trainer that never swept
    trainer.train()
    fresh = build()
    fresh.train()
    trained, reference = _weights(trainer.model), _weights(fresh.model)
    assert all(torch.equal(trained[k], reference[k]) for k in reference)
    assert not all(torch.equal(trained[k], before[k]) for k in before)  # it did train


def test_an_optimizer_the_trainer_already_has_is_untouched(make_core_trainer, core_data):
    trainer = make_core_trainer(FineTuneArguments(layer_decay=0.5), train=core_data(16))
    optimizer = trainer.create_optimizer()
    rates = [g["lr"] for g in optimizer.param_groups]
    lr_find(trainer, 1e-5, 1.0, 12)
    assert trainer.optimizer is optimizer and [g["lr"] for g in optimizer.param_groups] == rates
    assert optimizer.state_dict()["state"] == {}


# -- the recipes ----------------------------------------------------------------------------------------------------

def recipe_argv(name: str, tmp_path: Path, tiny_bert_dir, tiny_vit_dir, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_for(name, tiny_bert_dir, tiny_vit_dir)), *DATA[name](tmp_path),
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--per_device_train_batch_size", "4",
            "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--dataloader_num_workers", "0",
            "--lr_find", "--lr_find_steps", "60", "--lr_find_start", "1e-5", "--lr_find_end", "10", *extra]


@pytest.mark.parametrize("name", ["text_cls", "image_cls", "token_cls"])
def test_recipe_lr_find_prints_the_flag_and_writes_only_the_plot(name, tiny_bert_dir, tiny_vit_dir, tmp_path, capsys):
    extra = ["--layer_decay", "0.8", "--head_learning_rate", "4e-4", "--learning_rate", "1e-4", "--freeze_embeddings",
             "true", "--save_strategy", "steps", "--save_steps", "1"]
    metrics = recipe(name).main(*parse(name, recipe_argv(name, tmp_path, tiny_bert_dir, tiny_vit_dir, *extra)))
    printed = capsys.readouterr().out
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.png"]  # no checkpoint, model, config or lock
    image = np.asarray(Image.open(out / "lr_find.png").convert("L"))
    assert image.shape[0] > 100 and image.std() > 5
    assert "lr_find_suggestion" in metrics, printed
    suggestion = metrics["lr_find_suggestion"]
    flag = f"--learning_rate {suggestion:.2g} --head_learning_rate {suggestion * 4:.2g}"  # the head's ratio, 4x
    assert flag in printed and f"plot: {out / 'lr_find.png'}" in printed
    assert "Optimizer AdamW, parameter groups" in printed  # the sweep's groups are the run's


def test_lora_lr_find_and_an_occupied_output_dir_is_left_alone(tiny_bert_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"a finished model")
    (out / "MANIFEST.sha256.json").write_text("{}")
    metrics = recipe("text_cls").main(*parse("text_cls", recipe_argv("text_cls", tmp_path, tiny_bert_dir, None,
                                                                     "--lora", "--learning_rate", "1e-3")))
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.sha256.json", "model.safetensors"]
    plot = Path(printed.split("plot: ")[1].split()[0])
    assert plot.name == "lr_find.png" and plot.is_file() and plot.parent != out
    rate = metrics["lr_find_suggestion"]
    assert f"--learning_rate {rate:.2g} --head_learning_rate {rate:.2g}\n" in printed  # the recipe's head lr 1e-3: x1
    assert plot_destination(tmp_path / "new") == tmp_path / "new" / "lr_find.png"
    args = TrainingArguments(str(tmp_path / "new"), learning_rate=1e-3, report_to="none")
    assert suggested_flags(3.16e-5, args, FineTuneArguments()) == "--learning_rate 3.2e-05"  # no head flag unless set


def test_lr_find_flags_are_checked(tmp_path):
    with pytest.raises(ValueError, match="--lr_find_steps.*nothing without --lr_find"):
        FineTuneArguments(lr_find_steps=50)
    with pytest.raises(ValueError, match="0 < start < end"):
        FineTuneArguments(lr_find=True, lr_find_start=1e-2, lr_find_end=1e-3)
    with pytest.raises(ValueError, match="--lr_find_steps must be >= 10"):
        FineTuneArguments(lr_find=True, lr_find_steps=3)
    from ftlib.training.trainer import check_strategy_args

    args = TrainingArguments(str(tmp_path), resume_from_checkpoint="somewhere", report_to="none")
    with pytest.raises(ValueError, match="--lr_find trains nothing.*--resume_from_checkpoint"):
        check_strategy_args(args, FineTuneArguments(lr_find=True))


def test_plot_of_a_result_without_divergence(tmp_path):
    rates = [10 ** (-5 + k / 10) for k in range(30)]
    losses = [1.0 / (1 + k / 5) for k in range(30)]
    suggestion, minimum, reason = suggest_learning_rate(rates, smooth(losses))
    result = LRFindResult(rates, losses, smooth(losses), None, suggestion, reason, minimum)
    assert minimum == rates[-1] and suggestion == pytest.approx(rates[-1] / 10)  # still falling: the last rate
    image = np.asarray(Image.open(plot_lr_find(result, tmp_path / "p.png")).convert("L"))
    assert image.std() > 5


# -- two processes ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_processes_sweep_as_one_and_only_the_main_process_reports(tiny_bert_no_dropout_dir, tmp_path,
                                                                       recipe_process):
    """2 x 4 rows against 1 x 8 (random sampling: the same global batches, see test_multiprocess): the averaged
    losses, so the minimum and the suggestion, are the same; the summary is printed once, one plot written."""
    from test_multiprocess import command
    from test_resume import sentiment_csv

    train, val = sentiment_csv(tmp_path / "train.csv", 16), sentiment_csv(tmp_path / "val.csv", 8, offset=100)
    summaries = []
    for processes in (1, 2):
        out = tmp_path / f"out{processes}"
        cmd = command(tiny_bert_no_dropout_dir, (train, val), out, processes, "--lr_find", "--lr_find_steps", "60",
                      "--lr_find_start", "1e-5", "--lr_find_end", "10", "--layer_decay", "0.8")
        log = recipe_process(cmd, tmp_path / f"rec{processes}").wait()
        assert sorted(p.name for p in out.iterdir()) == ["lr_find.png"]
        assert log.count("LR range test:") == 1 and log.count("Optimizer AdamW, parameter groups") == 1
        lines = log.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("LR range test:"))
        summaries.append([line for line in lines[start:start + 5] if line.startswith("  ") and "plot:" not in line])
    one, two = summaries
    assert any("suggested" in line for line in one)
    assert one == two  # lowest smoothed loss (4 digits), divergence, suggestion


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
