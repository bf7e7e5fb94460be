"""Loading causal LMs and preparing their vocabulary (ftlib.training.decoder): --load_in_4bit refused without CUDA (or
--lora, or with --use_cpu) before anything loads, and its BitsAndBytesConfig; float32 and --attn_implementation;
a pad token chosen from the vocabulary, never added; added tokens grow the embeddings, and train or are refused."""

from __future__ import annotations

import logging
import sys
import types

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    TrainingArguments,
)

from ftlib.strategy.arguments import FineTuneArguments
from ftlib.training.arguments import CausalLMModelArguments
from ftlib.training.decoder import (
    add_tokens,
    causal_lm_load_kwargs,
    check_load_in_4bit,
    ensure_pad_token,
    lm_head_trains,
    load_causal_lm,
    new_token_training,
    quantization_config,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_cuda_and_bitsandbytes(monkeypatch):
    """What --load_in_4bit checks for, present: a CUDA device and an importable bitsandbytes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", types.ModuleType("bitsandbytes"))


def qlora_args(**model):
    return CausalLMModelArguments(model_name_or_path="some/model", load_in_4bit=True, **model)


def test_load_in_4bit_is_refused_without_cuda_naming_why(no_cuda, monkeypatch):
    loads = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a))
    with pytest.raises(ValueError, match=r"--load_in_4bit needs a CUDA GPU \(bitsandbytes' NF4 kernels run on CUDA "
                                         r"only\), and torch sees none here \(torch.cuda.is_available\(\) is False\)"):
        check_load_in_4bit(qlora_args(), FineTuneArguments(lora=True))
    with pytest.raises(ValueError, match="needs a CUDA GPU"):  # a library caller loading directly is refused too
        load_causal_lm(qlora_args(), "some/folder")
    assert loads == []  # refused before anything loaded


def test_load_in_4bit_needs_lora_and_the_gpu(fake_cuda_and_bitsandbytes, tmp_path):
    with pytest.raises(ValueError, match=r"--load_in_4bit \(QLoRA\) trains LoRA adapters on a frozen 4-bit model: add --lora"):
        check_load_in_4bit(qlora_args(), FineTuneArguments())
    cpu = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match=r"--load_in_4bit needs a CUDA GPU .*, and --use_cpu asks for the CPU"):
        check_load_in_4bit(qlora_args(), FineTuneArguments(lora=True), cpu)
    check_load_in_4bit(qlora_args(), FineTuneArguments(lora=True))  # all there: no error
    check_load_in_4bit(CausalLMModelArguments(model_name_or_path="m"), FineTuneArguments())  # not asked: nothing


def test_load_in_4bit_without_bitsandbytes_names_the_package(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    with pytest.raises(ValueError, match="--load_in_4bit needs bitsandbytes: pip install bitsandbytes"):
        check_load_in_4bit(qlora_args(), FineTuneArguments(lora=True))


def test_qlora_config_is_nf4_double_quant_bf16(fake_cuda_and_bitsandbytes):
    config = quantization_config(qlora_args())
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant, config.bnb_4bit_compute_dtype) == (
        "nf4", True, torch.bfloat16)
    second_process = types.SimpleNamespace(local_process_index=1)  # (real TrainingArguments would look for the GPU)
    kwargs = causal_lm_load_kwargs(qlora_args(attn_implementation="sdpa"), second_process)
    assert kwargs["quantization_config"] is not None and kwargs["dtype"] == torch.bfloat16
    assert kwargs["device_map"] == {"": 1} and kwargs["attn_implementation"] == "sdpa"
    assert quantization_config(CausalLMModelArguments(model_name_or_path="m")) is None


def tiny_llama_dir(tmp_path) -> str:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=20, max_position_embeddings=64)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "llama")  # saved in bf16
    return str(tmp_path / "llama")


def test_load_causal_lm_in_float32_with_the_attention_asked_for(tmp_path):
    folder = tiny_llama_dir(tmp_path)
    model = load_causal_lm(CausalLMModelArguments(model_name_or_path=folder, attn_implementation="eager"), folder)
    assert model.dtype == torch.float32  # the weights Trainer's mixed precision expects, whatever the file holds
    assert model.config._attn_implementation == "eager"
    assert causal_lm_load_kwargs(CausalLMModelArguments(model_name_or_path=folder)) == {"dtype": torch.float32}


# --- pad token ---------------------------------------------------------------------------------------


def word_tokenizer(words: list[str], **specials) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=specials.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


WORDS = ["<unk>", "</s>", "hello", "world", "<|finetune_right_pad_id|>"]


@pytest.mark.parametrize("words, specials, chosen", [
    (WORDS, {"unk_token": "<unk>", "eos_token": "</s>"}, "<|finetune_right_pad_id|>"),  # a reserved pad token
    (WORDS[:4], {"unk_token": "<unk>", "eos_token": "</s>"}, "<unk>"),
    (WORDS[1:4], {"eos_token": "</s>"}, "</s>"),
])
def test_pad_token_is_one_of_the_vocabulary(words, specials, chosen, caplog):
    tokenizer = word_tokenizer(words, **specials)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, vocab_size=len(words), pad_token_id=None))
    model.generation_config.pad_token_id = None
    with caplog.at_level(logging.INFO, logger="ftlib.training.decoder"):
        assert ensure_pad_token(tokenizer, model) == chosen
    assert tokenizer.pad_token == chosen and len(tokenizer) == len(words)  # nothing added
    pad_id = words.index(chosen)
    assert tokenizer.pad_token_id == model.config.pad_token_id == model.generation_config.pad_token_id == pad_id
    assert f"padding with {chosen!r} (id {pad_id})" in caplog.text
    assert ensure_pad_token(tokenizer, model) is None  # has one now: kept


def test_no_token_to_pad_with_is_an_error():
    tokenizer = word_tokenizer(["hello", "world"])
    with pytest.raises(ValueError, match="has no pad token, no unknown token and no end-of-sequence token"):
        ensure_pad_token(tokenizer)


# --- added tokens ------------------------------------------------------------------------------------


def test_added_markers_grow_the_embeddings_and_stay_whole(caplog):
    tokenizer = word_tokenizer(WORDS[:4], unk_token="<unk>", eos_token="</s>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, vocab_size=4))
    old = model.get_input_embeddings().weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="ftlib.training.decoder"):
        new_ids = add_tokens(tokenizer, model, ["<|im_start|>", "hello", "<|im_end|>", "<|im_start|>"])
    assert new_ids == [4, 5]  # "hello" was there; the repeat counts once
    assert model.get_input_embeddings().weight.shape == (6, 16) and model.get_output_embeddings().weight.shape == (6, 16)
    assert model.config.vocab_size == 6
    assert torch.equal(model.get_input_embeddings().weight[:4], old)  # the old rows are kept
    assert tokenizer("<|im_start|>hello<|im_end|>").input_ids == [4, 2, 5]
    assert "added 2 token(s) to the vocabulary: <|im_start|>, <|im_end|> (ids 4, 5)" in caplog.text
    assert add_tokens(tokenizer, model, ["<|im_start|>"]) == []  # present now


@pytest.mark.parametrize("flags, refused", [
    ({"freeze_embeddings": True}, "--freeze_embeddings"),
    ({"freeze_lower_blocks": 1}, "--freeze_lower_blocks"),
    ({"head_only": True}, "--head_only"),
    ({"lora": True, "freeze_embeddings": True}, "--freeze_embeddings"),
])
def test_new_token_rows_that_could_not_train_are_refused(flags, refused):
    with pytest.raises(ValueError, match=rf"2 token\(s\) were added to the vocabulary \(ids 7, 8\): their embedding "
                                         rf"rows are new and must train, but {refused} freeze"):
        new_token_training([7, 8], FineTuneArguments(**flags))


def test_new_token_rows_train_with_the_matrix_or_through_lora():
    assert new_token_training([7, 8], FineTuneArguments()) is None  # full fine-tuning: the whole matrix trains
    assert new_token_training([7, 8], FineTuneArguments(lora=True)) == [7, 8]  # peft's trainable tokens
    assert new_token_training([], FineTuneArguments(freeze_embeddings=True)) is None  # nothing added: no refusal


@pytest.mark.parametrize(("flags", "tied", "new_ids", "trains"), [
    ({"lora": True}, True, [], False),  # LoRA: the pretrained head stays frozen
    ({"lora": True}, False, [7], True),  # ... but for the rows of added tokens
    ({"lora": False}, True, [], True),
    ({"lora": False, "freeze_embeddings": True}, True, [], False),  # the tied head is the frozen embedding matrix
    ({"lora": False, "freeze_embeddings": True}, False, [], True),  # an untied head trains
])
def test_lm_head_trains(flags, tied, new_ids, trains):
    config = types.SimpleNamespace(tie_word_embeddings=tied)
    assert lm_head_trains(FineTuneArguments(**flags), config, new_ids) is trains
