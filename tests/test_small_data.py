"""Small-data strategies on the tiny 3-block BERT: the step budget, re-initialised top blocks, the head warm-up
and weight averaging (EMA / SWA), each checked on values."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification, TrainerCallback

from ftlib.strategy.anatomy import find_anatomy
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.small_data import AVERAGE_FILE, budget_epochs, reinit_top_blocks

HEAD = 4  # layer ids: 0 embeddings, 1..3 blocks, 4 head


class Snapshots(TrainerCallback):
    """Every parameter after each optimizer step, and the trainable layers at each step."""

    def __init__(self):
        self.after: list[dict[str, torch.Tensor]] = []
        self.trainable: list[set[str]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.trainable.append({n for n, p in model.named_parameters() if p.grad is not None})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after.append({n: p.detach().clone() for n, p in model.named_parameters()})


@pytest.mark.parametrize(
    "rows, per_step, epochs, min_steps, expected",
    [
        (300, 16, 3, 250, 14.0),  # 19 steps an epoch: 14 epochs = 266 steps, the first whole number >= 250
        (100, 32, 3, 250, 63.0),  # 4 steps an epoch (the last one short)
        (2000, 32, 3, 150, 3),  # 63 steps an epoch: the 3 epochs asked for already give 189
        (300, 16, 3, 0, 3),  # off
        (5, 16, 2, 10, 10.0),  # fewer rows than a batch: one step an epoch
    ],
)
def test_budget_epochs(rows, per_step, epochs, min_steps, expected):
    assert budget_epochs(rows, per_step, epochs, min_steps) == expected


def test_step_budget_raises_epochs_and_keeps_the_number_of_evaluations(make_core_trainer, core_data, tmp_path):
    # 16 rows, batch 4: 4 steps an epoch; 2 epochs = 8 steps < 30, so 8 epochs (32 steps)
    trainer = make_core_trainer(
        FineTuneArguments(min_train_steps=30), train=core_data(16), eval=core_data(8, seed=1), max_steps=-1,
        num_train_epochs=2, eval_strategy="epoch", save_strategy="epoch", lr_scheduler_type="linear",
    )
    assert trainer.args.num_train_epochs == 8 and trainer.planned_steps() == 32
    assert trainer.args.eval_strategy == "steps" and trainer.args.eval_steps == 16  # 2 evaluations, as asked
    assert trainer.args.save_strategy == "steps" and trainer.args.save_steps == 16
    trainer.train()
    assert trainer.state.global_step == 32
    assert [e["step"] for e in trainer.state.log_history if "eval_loss" in e] == [16, 32]
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-16", "checkpoint-32"]


def test_step_budget_leaves_max_steps_and_large_sets_alone(make_core_trainer, core_data):
    capped = make_core_trainer(FineTuneArguments(min_train_steps=30), train=core_data(16), max_steps=5)
    assert capped.planned_steps() == 5 and capped.args.num_train_epochs == 3  # TrainingArguments' default
    large = make_core_trainer(FineTuneArguments(min_train_steps=30), train=core_data(64), max_steps=-1,
                              num_train_epochs=2, eval_strategy="epoch", eval=core_data(8, seed=1))
    assert large.planned_steps() == 32 and large.args.num_train_epochs == 2 and large.args.eval_strategy == "epoch"


def test_reinit_top_blocks_touches_exactly_the_top_blocks_and_the_pooler(core_bert_dir):
    model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    anatomy = find_anatomy(model)
    paths = reinit_top_blocks(model, anatomy, 2)
    assert paths == ["bert.encoder.layer.1", "bert.encoder.layer.2", "bert.pooler"]
    for name, param in model.named_parameters():
        moved = not torch.equal(param, before[name])
        reinitialised = any(name.startswith(p + ".") for p in paths)
        if name.endswith("LayerNorm.weight") and reinitialised:
            assert torch.equal(param, torch.ones_like(param)), name  # norms back to the identity
        elif name.endswith("bias") and reinitialised:
            assert torch.equal(param, torch.zeros_like(param)), name
        elif reinitialised:
            assert moved and abs(param.std().item() - model.config.initializer_range) < 0.01, name
        else:
            assert not moved, name  # embeddings, block 0 and the head are as loaded
    with pytest.raises(ValueError, match="--reinit_top_blocks 4: the model has only 3 blocks"):
        reinit_top_blocks(model, anatomy, 4)


def test_reinit_is_seeded(core_bert_dir):
    def reinit(seed):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
        reinit_top_blocks(model, find_anatomy(model), 1)
        return model.bert.encoder.layer[2].output.dense.weight

    assert torch.equal(reinit(1), reinit(1)) and not torch.equal(reinit(1), reinit(2))


@pytest.mark.parametrize("warmup, body_from", [(3, 3), (0.5, 4)])  # 3 steps; half of 8 steps
def test_head_warmup_trains_the_head_alone_first(warmup, body_from, make_core_trainer, core_data):
    snaps = Snapshots()
    trainer = make_core_trainer(FineTuneArguments(head_warmup_steps=warmup), callbacks=[snaps], max_steps=8)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    layer = {n: trainer.anatomy.layer_id(n) for n in initial}
    head = {n for n in initial if layer[n] == HEAD}
    for step, grads in enumerate(snaps.trainable):
        assert grads == (head if step < body_from else set(initial)), step
    for name, value in initial.items():
        if layer[name] != HEAD:
            assert torch.equal(snaps.after[body_from - 1][name], value), name  # untouched until then
            assert not torch.equal(snaps.after[body_from][name], value), name
    assert trainer._gradual.every == body_from


def test_head_warmup_excludes_other_schedules():
    with pytest.raises(ValueError, match="choose --head_warmup_steps or --gradual_unfreeze"):
        FineTuneArguments(head_warmup_steps=10, gradual_unfreeze=1)
    with pytest.raises(ValueError, match="--head_warmup_steps must be a step count or a fraction"):
        FineTuneArguments(head_warmup_steps=2.5)


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_weight_average_is_evaluated_and_kept(kind, make_core_trainer, core_data):
    snaps = Snapshots()
    ft = FineTuneArguments(weight_averaging=kind, **({"ema_decay": 0.6} if kind == "ema" else {"swa_start": 0.5}))
    trainer = make_core_trainer(ft, callbacks=[snaps], max_steps=6, eval=core_data(8, seed=1))
    trainer.train()
    name = "bert.encoder.layer.1.attention.self.query.weight"
    steps = [s[name] for s in snaps.after]
    if kind == "ema":
        expected = steps[0].clone()
        for t, value in enumerate(steps[1:], start=1):
            decay = min(0.6, (1 + t) / (10 + t))
            expected = decay * expected + (1 - decay) * value
    else:  # the mean of the weights after steps 3..6 (global_step 3 is half of 6)
        expected = torch.stack(steps[2:]).mean(0)
    final = dict(trainer.model.named_parameters())[name].detach()
    assert torch.allclose(final, expected, atol=1e-6)
    assert not torch.allclose(final, steps[-1], atol=1e-4)  # the average, not the last weights
    # evaluate() after training uses the model as it now is: the average
    loss = trainer.evaluate()["eval_loss"]
    with torch.no_grad():
        trainer.model.eval()
        batch = {k: torch.stack([r[k] for r in core_data(8, seed=1)]) for k in ("input_ids", "attention_mask", "labels")}
        assert abs(trainer.model(**batch).loss.item() - loss) < 1e-5


def test_evaluation_during_training_sees_the_average(make_core_trainer, core_data):
    class EvalWeights(TrainerCallback):
        def __init__(self):
            self.seen = []

        def on_evaluate(self, args, state, control, model=None, **kwargs):
            self.seen.append(model.bert.encoder.layer[1].attention.self.query.weight.detach().clone())

    recorder = EvalWeights()
    trainer = make_core_trainer(FineTuneArguments(weight_averaging="ema", ema_decay=0.6), callbacks=[recorder],
                                max_steps=4, eval=core_data(8, seed=1), eval_strategy="steps", eval_steps=2)
    trainer.train()
    averaging = trainer._averaging
    assert len(recorder.seen) == 2
    # after training the model holds the average; during the step-4 evaluation it held the same values
    assert torch.equal(recorder.seen[1], trainer.model.bert.encoder.layer[1].attention.self.query.weight)
    assert averaging.finished


def test_weight_average_resumes_exactly(make_core_trainer, tmp_path):
    ft = FineTuneArguments(weight_averaging="ema", ema_decay=0.6)
    full = make_core_trainer(ft, max_steps=6, save_strategy="steps", save_steps=3)
    full.train()
    assert (tmp_path / "out" / "checkpoint-3" / AVERAGE_FILE).is_file()
    resumed = make_core_trainer(ft, max_steps=6, save_strategy="steps", save_steps=3, output_dir=str(tmp_path / "r"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))
    assert resumed._averaging.count == full._averaging.count == 6
    final = dict(resumed.model.named_parameters())
    for name, param in full.model.named_parameters():
        assert torch.equal(param, final[name]), name


def test_averaging_settings_need_their_kind():
    with pytest.raises(ValueError, match="--ema_decay does nothing without --weight_averaging ema"):
        FineTuneArguments(weight_averaging="swa", ema_decay=0.9)
    with pytest.raises(ValueError, match="--swa_start does nothing without --weight_averaging swa"):
        FineTuneArguments(swa_start=0.2)


def test_weight_averaging_refuses_load_best_model_at_end(make_core_trainer, core_data):
    with pytest.raises(ValueError, match="--weight_averaging and --load_best_model_at_end"):
        make_core_trainer(FineTuneArguments(weight_averaging="ema"), eval=core_data(8), load_best_model_at_end=True,
                          eval_strategy="steps", save_strategy="steps", eval_steps=2, save_steps=2)


# -- batch norm -----------------------------------------------------------------------------------------------------
def _tiny_resnet_trainer(tmp_path, ft_args: FineTuneArguments, steps: int = 3):
    """A 2-stage ResNet (batch norm everywhere) with a 3-class head, trained on random 16 px images."""
    from datasets import Dataset
    from transformers import ResNetConfig, ResNetForImageClassification, TrainingArguments

    from ftlib.training.trainer import FtTrainer, prepare_model

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    model, anatomy = prepare_model(ResNetForImageClassification(config), ft_args)
    pixels = torch.randn(16, 3, 16, 16) * 3 + 2  # statistics far from the initial (0, 1)
    data = Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": [i % 3 for i in range(16)]}).with_format("torch")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=steps,
                             learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True, logging_steps=1)
    return FtTrainer(model=model, args=args, train_dataset=data, ft_args=ft_args, anatomy=anatomy)


def _batch_norms(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_frozen_batch_norm_keeps_pretrained_statistics_while_weights_train(tmp_path):
    trainer = _tiny_resnet_trainer(tmp_path, FineTuneArguments(batch_norm="frozen"))
    layers = _batch_norms(trainer.model)
    assert layers
    before = [(m.running_mean.clone(), m.running_var.clone(), m.weight.detach().clone()) for m in layers]
    modes = []
    hooks = [m.register_forward_hook(lambda mod, *_: modes.append(mod.training)) for m in layers]
    trainer.train()
    for hook in hooks:
        hook.remove()
    assert modes and not any(modes)  # every forward of a batch-norm layer ran in evaluation mode
    for layer, (mean, var, weight) in zip(layers, before):
        assert torch.equal(layer.running_mean, mean) and torch.equal(layer.running_var, var)
        assert int(layer.num_batches_tracked) == 0
    assert any(not torch.equal(layer.weight, weight) for layer, (_, _, weight) in zip(layers, before))


@pytest.mark.parametrize("momentum", [None, 0.5])
def test_training_batch_norm_statistics_follow_the_data_with_the_momentum_asked(tmp_path, momentum):
    trainer = _tiny_resnet_trainer(tmp_path, FineTuneArguments(batch_norm_momentum=momentum), steps=2)
    layers = _batch_norms(trainer.model)
    assert all(m.momentum == (0.1 if momentum is None else momentum) for m in layers)  # None: the model's own
    stem = layers[0]
    mean_before = stem.running_mean.clone()
    seen = []
    stem.register_forward_hook(lambda mod, inputs, out: seen.append(inputs[0].detach().mean(dim=(0, 2, 3))))
    trainer.train()
    assert int(stem.num_batches_tracked) == 2
    # two updates of the running mean: m <- (1 - a) m + a * batch mean
    a = 0.1 if momentum is None else momentum
    expected = mean_before
    for batch_mean in seen[:2]:
        expected = (1 - a) * expected + a * batch_mean
    torch.testing.assert_close(stem.running_mean, expected, rtol=1e-4, atol=1e-5)


def test_batch_norm_settings_are_checked():
    with pytest.raises(ValueError, match="--batch_norm_momentum must be in"):
        FineTuneArguments(batch_norm_momentum=1.5)
    from ftlib.strategy.small_data import set_batch_norm

    with pytest.raises(ValueError, match="batch norm mode"):
        set_batch_norm(torch.nn.BatchNorm1d(2), "recalibrate")


# --- linear probing, then fine-tuning (--probe_first) -------------------------------------------------------------
class WeightsAtStart(TrainerCallback):
    """The model's weights when (the fine-tuning's) training begins."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights = {n: p.detach().clone() for n, p in model.named_parameters()}


def test_probe_first_trains_the_head_alone_then_fine_tunes_from_it(make_core_trainer, core_data):
    from transformers import set_seed

    start = WeightsAtStart()
    set_seed(0)
    probed = make_core_trainer(FineTuneArguments(probe_first="yes", probe_learning_rate=0.05), callbacks=[start],
                               train=core_data(16), max_steps=4, learning_rate=1e-3)
    initial = {n: p.detach().clone() for n, p in probed.model.named_parameters()}
    probed.train()
    layer = {n: probed.anatomy.layer_id(n) for n in initial}
    for name, value in initial.items():  # the probe moved the head, nothing else
        assert torch.equal(start.weights[name], value) == (layer[name] != HEAD), name
    assert probed.probe_first_metrics["train_loss"] > 0 and probed.state.global_step == 4
    assert all(p.requires_grad for p in probed.model.parameters())  # restored for the fine-tuning
    # the fine-tuning is the run without --probe_first started from the probe's head: same batches, same dropout
    set_seed(0)
    plain = make_core_trainer(FineTuneArguments(), train=core_data(16), max_steps=4, learning_rate=1e-3)
    with torch.no_grad():
        for name, param in plain.model.named_parameters():
            param.copy_(start.weights[name])
    plain.train()
    for (name, a), b in zip(probed.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(a, b), name


def test_probe_first_small_runs_only_where_the_budget_lengthens_training(make_core_trainer, core_data):
    def trainer(rows, mode, **flags):
        return make_core_trainer(FineTuneArguments(probe_first=mode, min_train_steps=30, **flags), train=core_data(rows),
                                 max_steps=-1, num_train_epochs=2)

    assert trainer(16, "small").wants_probe_first()  # 8 steps -> 32
    assert not trainer(64, "small").wants_probe_first()  # 32 steps already
    assert trainer(64, "yes").wants_probe_first() and not trainer(64, "no").wants_probe_first()
    assert not trainer(16, "small", head_only=True).wants_probe_first()


def test_probe_first_is_skipped_on_resume(make_core_trainer, core_data, tmp_path):
    def trainer():
        return make_core_trainer(FineTuneArguments(probe_first="yes"), train=core_data(16), max_steps=4,
                                 save_strategy="steps", save_steps=2)

    first = trainer()
    first.train()
    assert first.probe_first_metrics is not None  # the probe wrote nothing into the run's output directory
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert resumed.probe_first_metrics is None and resumed.state.global_step == 4
    for (name, a), b in zip(first.model.named_parameters(), resumed.model.parameters()):  # exact: the head came
        assert torch.equal(a, b), name  # from the checkpoint


@pytest.mark.parametrize("flags, message", [
    ({"probe_first": "yes", "head_only": True}, "--probe_first yes with --head_only"),
    ({"probe_first": "always"}, "--probe_first must be no, small or yes, got 'always'"),
    ({"probe_learning_rate": 1e-2}, "--probe_learning_rate does nothing without --compare_head_only or --probe_first"),
])
def test_probe_first_settings_are_checked(flags, message):
    import re

    with pytest.raises(ValueError, match=re.escape(message)):
        FineTuneArguments(**flags)
