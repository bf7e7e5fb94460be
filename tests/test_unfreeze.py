"""Gradual unfreezing (ULMFiT) on a tiny 3-block BERT: the trainable set changes at exactly the configured
optimizer steps, frozen blocks stay bit-identical until then, and a resumed run equals an uninterrupted
one."""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import TrainerCallback

from ftlib.strategy.anatomy import find_anatomy
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.unfreeze import GradualUnfreezeCallback, unfreeze_stages

HEAD, TOP = 4, 3  # layer ids: 0 embeddings, 1..3 blocks, 4 head
# Trainable layers at each stage with one block per stage; the embeddings thaw with the lowest block.
STAGE_LAYERS = {1: {4}, 2: {4, 3}, 3: {4, 3, 2}, 4: {4, 3, 2, 1, 0}}


class Recorder(TrainerCallback):
    """Per optimizer step: which layers require grad and which have a gradient (just before the update),
    and every parameter's value after the update."""

    def __init__(self):
        self.anatomy = None
        self.trainable: list[set[int]] = []
        self.with_grad: list[set[int]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = list(model.named_parameters())
        self.trainable.append({self.anatomy.layer_id(n) for n, p in params if p.requires_grad})
        self.with_grad.append({self.anatomy.layer_id(n) for n, p in params if p.grad is not None})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after.append({n: p.detach().clone() for n, p in model.named_parameters()})


def gradual_trainer(make_core_trainer, every=2, unit="step", **overrides):
    recorder = Recorder()
    ft = FineTuneArguments(gradual_unfreeze=every, gradual_unfreeze_unit=unit)
    settings = {"max_steps": 8, "learning_rate": 1e-2} | overrides
    trainer = make_core_trainer(ft, callbacks=[recorder], **settings)
    recorder.anatomy = trainer.anatomy
    return trainer, recorder


def test_stages_from_the_top(core_bert_dir):
    from transformers import AutoModelForSequenceClassification

    anatomy = find_anatomy(AutoModelForSequenceClassification.from_pretrained(core_bert_dir))
    assert unfreeze_stages(anatomy, 1) == [[4], [3], [2], [1, 0]]
    assert unfreeze_stages(anatomy, 2) == [[4], [3, 2], [1, 0]]
    assert unfreeze_stages(anatomy, 3) == [[4], [3, 2, 1, 0]]


@pytest.mark.parametrize(
    "unit, every, extra", [("step", 2, {}), ("epoch", 1, {"max_steps": -1, "num_train_epochs": 4})]
)
def test_trainable_set_changes_at_exactly_the_configured_steps(
    unit, every, extra, make_core_trainer, core_data
):
    # 8 examples, batch 4: 2 optimizer steps per epoch, so "every 1 epoch" and "every 2 steps" agree
    trainer, rec = gradual_trainer(make_core_trainer, every, unit, train=core_data(8), **extra)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 8
    expected_stage = [1, 1, 2, 2, 3, 3, 4, 4]  # stage used by optimizer step 0..7
    assert rec.trainable == [STAGE_LAYERS[s] for s in expected_stage]
    assert rec.with_grad == rec.trainable  # frozen layers get no gradient at all
    assert trainer._gradual.unfrozen_stages == 4

    first_step = {4: 0, 3: 2, 2: 4, 1: 6, 0: 6}
    layer = {n: trainer.anatomy.layer_id(n) for n in initial}
    for step, values in enumerate(rec.after):
        previous = initial if step == 0 else rec.after[step - 1]
        for name, value in values.items():
            f = first_step[layer[name]]
            if step < f:  # still frozen: bit-identical to the start
                assert torch.equal(value, initial[name]), (step, name)
            elif step == f:  # its first trainable step moves it
                assert not torch.equal(value, previous[name]), (step, name)


def test_stage_saved_in_trainer_state(make_core_trainer, tmp_path):
    trainer, _ = gradual_trainer(make_core_trainer, save_strategy="steps", save_steps=3, max_steps=6)
    trainer.train()
    for step, stage in ((3, 2), (6, 3)):
        state = json.loads((tmp_path / "out" / f"checkpoint-{step}" / "trainer_state.json").read_text())
        saved = state["stateful_callbacks"]["GradualUnfreezeCallback"]
        assert saved["attributes"]["unfrozen_stages"] == stage
        assert saved["args"]["every"] == 2 and saved["args"]["unit"] == "step"
        assert len(saved["args"]["stages"]) == 4
        assert saved["args"]["stages"][0] == ["classifier.weight", "classifier.bias"]


@pytest.mark.parametrize("restore_callbacks", [False, True])
def test_resume_between_unfreezing_steps_equals_uninterrupted(restore_callbacks, make_core_trainer, tmp_path):
    # uninterrupted: 8 steps, stages change before steps 2, 4 and 6; checkpoint-3 sits between two of them
    full, _ = gradual_trainer(make_core_trainer, save_strategy="steps", save_steps=3)
    full.train()
    checkpoint = tmp_path / "out" / "checkpoint-3"
    assert checkpoint.is_dir()

    resumed, rec = gradual_trainer(
        make_core_trainer,
        save_strategy="steps",
        save_steps=3,
        output_dir=str(tmp_path / "resumed"),
        restore_callback_states_from_checkpoint=restore_callbacks,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 8
    assert rec.trainable == [STAGE_LAYERS[s] for s in (2, 3, 3, 4, 4)]  # steps 3..7
    final = dict(resumed.model.named_parameters())
    for name, param in full.model.named_parameters():
        assert torch.equal(param, final[name]), name
    live = [cb for cb in resumed.callback_handler.callbacks if isinstance(cb, GradualUnfreezeCallback)]
    assert len(live) == 1 and live[0] is resumed._gradual
    assert resumed._gradual.unfrozen_stages == full._gradual.unfrozen_stages == 4
    state = json.loads((tmp_path / "resumed" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["GradualUnfreezeCallback"]["attributes"]["unfrozen_stages"] == 3


def test_callback_rejects_bad_settings():
    with pytest.raises(ValueError, match="--gradual_unfreeze must be >= 1"):
        GradualUnfreezeCallback([["a"]], every=0)
    with pytest.raises(ValueError, match="--gradual_unfreeze_unit"):
        GradualUnfreezeCallback([["a"]], every=1, unit="batch")
    cb = GradualUnfreezeCallback([["h"], ["b"], ["e"]], every=3, unit="epoch")
    assert [cb.stage_at(0, e) for e in (0.0, 2.99, 3.0, 5.5, 6.0, 60.0)] == [1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("freeze_embeddings", [False, True])
def test_explicit_frozen_embeddings_stay_frozen_and_the_table_says_so(freeze_embeddings, make_core_trainer, core_data):
    # ULMFiT thaws the embeddings with the lowest block (before step 6 here); --freeze_embeddings keeps them frozen
    recorder = Recorder()
    ft = FineTuneArguments(gradual_unfreeze=2, gradual_unfreeze_unit="step", freeze_embeddings=freeze_embeddings)
    trainer = make_core_trainer(ft, callbacks=[recorder], train=core_data(8), max_steps=8)
    recorder.anatomy = trainer.anatomy
    embeddings = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if trainer.anatomy.layer_id(n) == 0}
    trainer.train()
    last = STAGE_LAYERS[4] - ({0} if freeze_embeddings else set())
    assert recorder.trainable[6:] == [last, last]
    moved = [n for n, p in trainer.model.named_parameters() if n in embeddings and not torch.equal(p, embeddings[n])]
    assert (moved == []) == freeze_embeddings
    rows = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line) for line in trainer.group_table.splitlines()[2:])}
    if freeze_embeddings:  # left out of the optimizer, and said so
        assert "embeddings" not in rows
        assert rows["embeddings: not optimised (frozen)"] == [f"{3136 + 64:,}", "frozen", "-", "-", "never"]
    else:
        assert rows["embeddings"][-1] == "step 6"
    assert rows["head"][-1] == "start" and rows["block 2"][-1] == "step 2", trainer.group_table
