"""LoRA through peft on a tiny 3-block BERT: only adapters and head train (count asserted), the base stays
bit-identical, adapter and merged saves reload to the same logits, and the freezing / LR rules combine."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification

from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.lora import apply_lora, default_target_modules, save_lora

R, HIDDEN, LAYERS, LABELS = 4, 32, 3, 2
PER_MODULE = R * HIDDEN + HIDDEN * R  # lora_A (r x in) + lora_B (out x r), query and value are 32 -> 32
HEAD = HIDDEN * LABELS + LABELS  # the classifier, trained in full (modules_to_save)
LORA = {"lora": True, "lora_r": R, "lora_alpha": 8.0, "lora_dropout": 0.0}


def base_name(peft_name: str) -> str:
    """The plain model's name of a PeftModel's base parameter."""
    name = peft_name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def is_adapter_or_head_copy(name: str) -> bool:
    return "lora_" in name or "modules_to_save" in name


def logits_of(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def stack(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}


def test_defaults_per_architecture(core_bert_dir):
    model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
    assert default_target_modules(model) == ["query", "value"]
    assert default_target_modules(torch.nn.Linear(2, 2)) == "all-linear"


def test_lora_trains_only_adapters_and_head(make_core_trainer, core_bert_dir, core_data, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="ftlib.training.trainer")
    trainer = make_core_trainer(FineTuneArguments(**LORA), task_type="SEQ_CLS", max_steps=4)
    plain = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
    base_total = sum(p.numel() for p in plain.parameters())

    expected = 2 * LAYERS * PER_MODULE + HEAD
    assert expected == 1602
    message = f"trainable parameters: {expected:,} of {base_total + 2 * LAYERS * PER_MODULE + HEAD:,}"
    assert message in caplog.text
    assert trainer.model.get_nb_trainable_parameters()[0] == expected
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert all(is_adapter_or_head_copy(n) for n in trainable)
    assert len([n for n in trainable if "lora_A" in n]) == 2 * LAYERS

    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    originals = dict(plain.named_parameters())
    for name, value in after.items():
        if name in trainable:
            assert not torch.equal(value, before[name]), name
        else:  # the base model, bit-identical to the checkpoint
            assert torch.equal(value, originals[base_name(name)]), name

    # save the adapter, reload it on a fresh base: same logits
    batch = stack(core_data(6, seed=3))
    trained = logits_of(trainer.model, batch)
    assert not torch.allclose(trained, logits_of(plain, batch), atol=1e-4)  # the adapter changed the outputs
    save_lora(trainer.model, tmp_path / "adapter", merged=False)
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= saved and "model.safetensors" not in saved
    fresh = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    assert torch.allclose(logits_of(reloaded, batch), trained, atol=1e-6)

    # merged save: a plain transformers checkpoint with the same logits
    merged = save_lora(trainer.model, tmp_path / "merged", merged=True)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    plain_again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert torch.allclose(logits_of(plain_again, batch), trained, atol=1e-5)


def test_lora_with_freeze_lower_blocks_freezes_their_adapters(make_core_trainer, caplog):
    caplog.set_level(logging.INFO, logger="ftlib.training.trainer")
    trainer = make_core_trainer(FineTuneArguments(freeze_lower_blocks=2, **LORA), task_type="SEQ_CLS")
    expected = 2 * PER_MODULE + HEAD  # the top block's adapters and the head
    assert re.search(rf"trainable parameters: {expected:,} of ", caplog.text)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        if "lora_" not in name:
            continue
        top = ".layer.2." in name
        assert param.requires_grad == top, name
        assert torch.equal(param, before[name]) != top, name  # lower adapters untouched, top ones trained
        if "lora_B" in name and not top:
            assert not param.any()  # still peft's zero init


def test_lora_with_layer_decay_groups(make_core_trainer):
    ft = FineTuneArguments(layer_decay=0.5, head_learning_rate=3e-3, **LORA)
    trainer = make_core_trainer(ft, task_type="SEQ_CLS", learning_rate=1e-3, max_steps=1)
    trainer.train()
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    # adapters have no bias: one group per block; the head's copy has weight and bias
    assert lrs == pytest.approx(
        {"block 0": 2.5e-4, "block 1": 5e-4, "block 2": 1e-3, "head": 3e-3, "head (no decay)": 3e-3}
    )
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        for param in group["params"]:
            name = names[id(param)]
            assert is_adapter_or_head_copy(name), name
            if group["name"].startswith("block"):
                assert f".layer.{group['name'][-1]}." in name


def test_bad_target_modules_name_the_flag(core_bert_dir):
    from ftlib.strategy.anatomy import find_anatomy

    model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir)
    with pytest.raises(ValueError, match="--lora_target_modules"):
        apply_lora(model, find_anatomy(model), target_modules=["no_such_module"])
