"""The strategy core on decoders (tiny Llama, Qwen2, Mistral, Gemma3, GPT-2, OPT causal LMs): the anatomy finds the
blocks, the final norm and the LM head; tied input / output embeddings are one tensor that counts as the head, which
--freeze_embeddings freezes (saying so) and the other freezing flags leave training (saying so); parameter groups
hold every trainable tensor once at the configured rates; layer decay, lower-block freezing and gradual unfreezing
work on a tiny Llama through FtTrainer."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback, TrainingArguments

from ftlib.strategy.anatomy import find_anatomy
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.strategy.freezing import apply_freezing, freeze_patterns
from ftlib.strategy.optim import build_param_groups
from ftlib.training.trainer import FtTrainer, prepare_model

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 99
LLAMA_LIKE = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "vocab_size": VOCAB, "max_position_embeddings": 64}
CONFIGS = {
    "llama": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "gemma3_text": {**LLAMA_LIKE, "head_dim": 8, "sliding_window": 16},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": VOCAB, "n_positions": 64,
             "bos_token_id": 0, "eos_token_id": 0},
    "opt": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 64, "vocab_size": VOCAB,
            "word_embed_proj_dim": 32, "max_position_embeddings": 64, "bos_token_id": 0, "eos_token_id": 0,
            "pad_token_id": 1},
}
# model type -> (embeddings, block paths, final norm, tied names or ())
EXPECTED = {
    "llama": (("model.embed_tokens",), "model.layers", "model.norm", ()),
    "qwen2": (("model.embed_tokens",), "model.layers", "model.norm", ()),
    "mistral": (("model.embed_tokens",), "model.layers", "model.norm", ()),
    "gemma3_text": (("model.embed_tokens",), "model.layers", "model.norm", ("model.embed_tokens.weight", "lm_head.weight")),
    "gpt2": (("transformer.wte", "transformer.wpe"), "transformer.h", "transformer.ln_f",
             ("transformer.wte.weight", "lm_head.weight")),
    # OPT registers its final_layer_norm before its layers: found by its name, not its position
    "opt": (("model.decoder.embed_tokens", "model.decoder.embed_positions"), "model.decoder.layers",
            "model.decoder.final_layer_norm", ("model.decoder.embed_tokens.weight", "lm_head.weight")),
}
HEAD = 3  # layer ids: 0 embeddings, 1-2 blocks, 3 head


def tiny_causal_lm(model_type: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**CONFIGS[model_type], **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


def blocks_in_forward_order(model: nn.Module, blocks: tuple[str, ...]) -> list[int]:
    order: list[int] = []
    hooks = [model.get_submodule(path).register_forward_pre_hook(lambda *_, i=i: order.append(i))
             for i, path in enumerate(blocks)]
    with torch.no_grad():
        model(input_ids=torch.randint(3, VOCAB, (1, 8)))
    for hook in hooks:
        hook.remove()
    return order


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_decoder_anatomy(model_type):
    model = tiny_causal_lm(model_type)
    embeddings, stack, final_norm, tied = EXPECTED[model_type]
    anatomy = find_anatomy(model)

    assert anatomy.blocks == (f"{stack}.0", f"{stack}.1")
    assert blocks_in_forward_order(model, anatomy.blocks) == [0, 1]
    assert anatomy.embeddings == embeddings
    assert anatomy.head == ("lm_head",)
    assert anatomy.final_parts() == (final_norm,)
    assert anatomy.tied == ((tied,) if tied else ())
    ids = {name: anatomy.layer_id(name) for name, _ in model.named_parameters(remove_duplicate=False)}
    # Gemma3's one embedding is its tied matrix, which is the head: nothing is left at layer 0
    assert set(ids.values()) == ({1, 2, HEAD} if model_type == "gemma3_text" else {0, 1, 2, HEAD})
    assert ids["lm_head.weight"] == HEAD
    for name, layer in ids.items():
        if name.startswith(final_norm + "."):
            assert layer == 2, name  # the final norm sits on the top block
        elif name in tied:
            assert layer == HEAD, name  # both names of the tied matrix: the head
        elif name.startswith(tuple(e + "." for e in embeddings)):
            assert layer == 0, name
        elif name.startswith(f"{stack}.1."):
            assert layer == 2, name
    if tied:
        assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
        assert "Tied input / output embeddings" in anatomy.notes and " = ".join(tied) in anatomy.notes


def test_opt_projections_go_with_embeddings_and_top_block():
    """opt-350m's shape: a narrower word embedding projected in below the blocks and out above them."""
    model = tiny_causal_lm("opt", word_embed_proj_dim=16)
    anatomy = find_anatomy(model)
    assert anatomy.layer_id("model.decoder.project_in.weight") == 0
    assert anatomy.layer_id("model.decoder.project_out.weight") == 2
    assert anatomy.final_parts() == ("model.decoder.project_out", "model.decoder.final_layer_norm")


# --- tied embeddings: freezing ---------------------------------------------------------------------


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def freeze(model, caplog, **flags) -> set[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ftlib.strategy.freezing"):
        apply_freezing(model, find_anatomy(model), FineTuneArguments(**flags))
    return trainable_names(model)


def test_freeze_embeddings_freezes_a_tied_head_and_says_so(caplog):
    model = tiny_causal_lm("gpt2")
    trainable = freeze(model, caplog, freeze_embeddings=True)
    assert not {"transformer.wte.weight", "lm_head.weight", "transformer.wpe.weight"} & trainable
    assert "transformer.h.0.attn.c_attn.weight" in trainable and "transformer.ln_f.weight" in trainable
    assert ("--freeze_embeddings freezes transformer.wte.weight = lm_head.weight: the input embeddings and the LM "
            "head share this matrix (tied), so the LM head is frozen too") in caplog.text


@pytest.mark.parametrize("flags", [{"freeze_lower_blocks": 1}, {"train_top_blocks": 1}, {"head_only": True}])
def test_other_freezing_flags_leave_a_tied_head_training_and_say_so(flags, caplog):
    model = tiny_causal_lm("gpt2")
    trainable = freeze(model, caplog, **flags)
    assert {"transformer.wte.weight", "lm_head.weight"} <= trainable  # the head, under both names
    assert "transformer.wpe.weight" not in trainable  # the embeddings that are not the head froze
    assert "transformer.h.0.attn.c_attn.weight" not in trainable
    assert ("transformer.wte.weight = lm_head.weight is both the input embeddings and the LM head (tied): it counts "
            "as the head and keeps training") in caplog.text


def test_untied_llama_freezes_embeddings_alone_without_a_tie_message(caplog):
    model = tiny_causal_lm("llama")
    trainable = freeze(model, caplog, freeze_embeddings=True)
    assert "model.embed_tokens.weight" not in trainable and "lm_head.weight" in trainable
    assert "tied" not in caplog.text


def test_freeze_patterns_on_the_lm_head_name_freezes_the_tied_matrix_and_says_so(caplog):
    model = tiny_causal_lm("gemma3_text")
    with caplog.at_level(logging.INFO, logger="ftlib.strategy.freezing"):
        assert freeze_patterns(model, [r"^lm_head\."]) == ["lm_head.weight"]  # a name named_parameters() hides
    assert not {"lm_head.weight", "model.embed_tokens.weight"} & trainable_names(model)
    assert ("--freeze_patterns '^lm_head\\.' freezes lm_head.weight, which is also model.embed_tokens.weight "
            "(one tensor, tied): frozen too") in caplog.text


# --- parameter groups --------------------------------------------------------------------------------


def group_of(groups: list[dict]) -> dict[int, str]:
    return {id(p): g["name"] for g in groups for p in g["params"]}


def assert_every_trainable_tensor_once(model: nn.Module, groups: list[dict]) -> None:
    grouped = [id(p) for g in groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)), "a tensor in two groups (or twice in one)"
    assert set(grouped) == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("model_type", ["gpt2", "gemma3_text"])
def test_tied_matrix_is_in_the_head_group_once_at_the_head_rate(model_type):
    model = tiny_causal_lm(model_type)
    anatomy = find_anatomy(model)
    groups = build_param_groups(model, anatomy, 1e-3, head_lr=5e-3, layer_decay=0.5, weight_decay=0.1)
    assert_every_trainable_tensor_once(model, groups)
    shared = model.get_output_embeddings().weight
    head = [g for g in groups if g["layer_id"] == HEAD]
    assert [g["name"] for g in head] == ["head"] and head[0]["lr"] == 5e-3
    assert [id(p) for p in head[0]["params"]] == [id(shared)]
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates["block 1"] == 1e-3 and rates["block 0"] == 5e-4
    if model_type == "gpt2":
        assert rates["embeddings"] == 2.5e-4  # wpe, the embeddings that are not the head


def tiny_llama_dir(tmp_path) -> str:
    path = tmp_path / "tiny-llama"
    tiny_causal_lm("llama").save_pretrained(path)
    return str(path)


def lm_rows(n: int = 8, length: int = 12, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, length), generator=g)
    return [{"input_ids": row, "attention_mask": torch.ones(length, dtype=torch.long), "labels": row} for row in ids]


def llama_trainer(tmp_path, ft_args: FineTuneArguments, **overrides) -> FtTrainer:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir(tmp_path))
    model, anatomy = prepare_model(model, ft_args, task_type="CAUSAL_LM")
    settings = {"output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, "seed": 0,
                "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-3,
                "lr_scheduler_type": "constant", "save_strategy": "no", "logging_strategy": "no",
                "disable_tqdm": True, "weight_decay": 0.01} | overrides
    return FtTrainer(model=model, args=TrainingArguments(**settings), train_dataset=lm_rows(), ft_args=ft_args,
                     anatomy=anatomy)


def test_llama_layer_decay_head_rate_and_lower_block_freezing(tmp_path):
    ft = FineTuneArguments(layer_decay=0.5, head_learning_rate=4e-3, freeze_lower_blocks=1)
    trainer = llama_trainer(tmp_path, ft)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    groups = trainer.optimizer.param_groups
    assert_every_trainable_tensor_once(trainer.model, groups)
    rates = {g["name"]: g["lr"] for g in groups}
    assert rates == {"block 1": 1e-3, "block 1 (no decay)": 1e-3, "head": 4e-3}  # embeddings, block 0: frozen
    where = group_of(groups)
    named = dict(trainer.model.named_parameters())
    assert where[id(named["model.norm.weight"])] == "block 1 (no decay)"  # the final norm: with the top block
    assert where[id(named["lm_head.weight"])] == "head"
    for name, value in trainer.model.named_parameters():
        moved = not torch.equal(value, before[name])
        assert moved == name.startswith(("model.layers.1.", "model.norm.", "lm_head.")), name
    table = trainer.group_table
    assert re.search(r"^head\s+3,168\s+yes\s+0\.004\s+0\.01$", table, re.MULTILINE), table
    assert re.search(r"^embeddings, block 0: not optimised \(frozen\)\s+", table, re.MULTILINE), table


def test_llama_gradual_unfreezing_stages_from_the_head_down(tmp_path):
    ft = FineTuneArguments(gradual_unfreeze=1, gradual_unfreeze_unit="step")
    trainer = llama_trainer(tmp_path, ft, max_steps=3)
    seen: list[set[int]] = []

    class Spy(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen.append({trainer.anatomy.layer_id(n) for n, p in model.named_parameters() if p.grad is not None})

    trainer.add_callback(Spy())
    trainer.train()
    assert seen == [{3}, {3, 2}, {3, 2, 1, 0}]  # head; + block 1 and the final norm; + block 0 and embeddings
    assert_every_trainable_tensor_once(trainer.model, trainer.optimizer.param_groups)
    assert "unfrozen at" in trainer.group_table and re.search(r"^head\s.*start$", trainer.group_table, re.MULTILINE)

