"""Freezing on a tiny BERT: after real optimizer steps frozen tensors are bit-identical, trainable ones moved,
and bad options fail before training with a message naming them."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.freezing import count_parameters, layers_to_freeze
from ftlib.training.trainer import prepare_model

EMB = r"bert\.embeddings\."
BLOCK = r"bert\.encoder\.layer\.{}\."
POOLER = r"bert\.pooler\."  # attached to the top block


def train_and_split(make_core_trainer, ft_args: FineTuneArguments):
    """Train 3 AdamW steps; return (names unchanged, names changed, trainer)."""
    trainer = make_core_trainer(ft_args)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 3
    after = dict(trainer.model.named_parameters())
    same = {n for n in before if torch.equal(before[n], after[n])}
    return same, set(before) - same, trainer


def names_matching(model_names, *patterns: str) -> set[str]:
    return {n for n in model_names if any(re.match(p, n) for p in patterns)}


CASES = {
    "freeze_embeddings": ({"freeze_embeddings": True}, [EMB]),
    "freeze_lower_blocks=2": ({"freeze_lower_blocks": 2}, [EMB, BLOCK.format(0), BLOCK.format(1)]),
    "train_top_blocks=1": ({"train_top_blocks": 1}, [EMB, BLOCK.format(0), BLOCK.format(1)]),
    "train_top_blocks=0": ({"train_top_blocks": 0}, [EMB, r"bert\."]),
    "freeze_patterns": (
        {"freeze_patterns": [r"attention\.self\.query", r"LayerNorm"]},
        [r".*query", r".*LayerNorm"],
    ),
    "head_only": ({"head_only": True}, [r"bert\."]),
    "embeddings+patterns": (
        {"freeze_embeddings": True, "freeze_patterns": [r"layer\.2\.output"]},
        [EMB, r".*layer\.2\.output"],
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_frozen_tensors_bit_identical_and_trainable_ones_changed(case, make_core_trainer):
    options, frozen_patterns = CASES[case]
    same, changed, trainer = train_and_split(make_core_trainer, FineTuneArguments(**options))
    names = same | changed
    expected_frozen = names_matching(names, *frozen_patterns)
    assert expected_frozen, "the case must freeze something"
    assert same == expected_frozen
    assert changed == names - expected_frozen
    assert changed >= {"classifier.weight", "classifier.bias"}  # the head always trains
    # requires_grad agrees, and frozen tensors were left out of the optimizer
    for name, param in trainer.model.named_parameters():
        assert param.requires_grad == (name not in expected_frozen), name
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    frozen_ids = {id(p) for n, p in trainer.model.named_parameters() if n in expected_frozen}
    assert not in_optimizer & frozen_ids
    trainable, total = count_parameters(trainer.model)
    sizes = {n: p.numel() for n, p in trainer.model.named_parameters()}
    assert trainable == sum(sizes[n] for n in changed)
    assert total == sum(sizes.values())


def test_pooler_freezes_with_the_top_block(make_core_trainer):
    same, changed, _ = train_and_split(make_core_trainer, FineTuneArguments(freeze_lower_blocks=3))
    assert same == names_matching(same | changed, r"bert\.")  # all 3 blocks + embeddings + pooler (top block)
    assert any(re.match(POOLER, n) for n in same)


def test_layers_to_freeze_ids(core_bert_dir):
    from ftlib.strategy.anatomy import find_anatomy

    anatomy = find_anatomy(AutoModelForSequenceClassification.from_pretrained(core_bert_dir))
    assert anatomy.num_blocks == 3
    assert layers_to_freeze(anatomy, embeddings=True) == {0}
    assert layers_to_freeze(anatomy, lower_blocks=1) == {0, 1}
    assert layers_to_freeze(anatomy, top_blocks=3) == {0}
    assert layers_to_freeze(anatomy, top_blocks=2) == {0, 1}
    assert layers_to_freeze(anatomy, head_only=True) == {0, 1, 2, 3}
    assert layers_to_freeze(anatomy) == set()


@pytest.mark.parametrize(
    "options, message",
    [
        ({"freeze_lower_blocks": 4}, r"--freeze_lower_blocks=4 but the model has only 3 blocks"),
        ({"train_top_blocks": 5}, r"--train_top_blocks=5 but the model has only 3 blocks"),
        ({"freeze_patterns": ["no_such_module"]}, r"--freeze_patterns 'no_such_module' matches no parameter"),
        ({"freeze_patterns": ["embeddings", "decoder"]}, r"--freeze_patterns 'decoder' matches no parameter"),
        ({"head_only": True, "freeze_patterns": ["classifier"]}, r"leave no trainable parameter"),
    ],
)
def test_bad_freezing_fails_before_training(options, message, core_bert_dir):
    model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
    with pytest.raises(ValueError, match=message):
        prepare_model(model, FineTuneArguments(**options))


def test_freeze_blocks_error_names_the_blocks(core_bert_dir):
    model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
    with pytest.raises(ValueError) as info:
        prepare_model(model, FineTuneArguments(freeze_lower_blocks=7))
    assert "bert.encoder.layer.0 ... bert.encoder.layer.2" in str(info.value)
