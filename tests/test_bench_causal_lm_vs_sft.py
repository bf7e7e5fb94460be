"""bench/causal_lm_vs_sft.py's own pieces: best-fit packing, the padding-free batch (its loss equals the examples'
losses computed one by one), GSM8K's final number."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("causal_lm_vs_sft", ROOT / "bench" / "causal_lm_vs_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _example(length: int, prompt: int, start: int) -> dict[str, list[int]]:
    ids = list(range(start, start + length))
    return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}


def test_best_fit_packing(bench):
    examples = [_example(n, 1, 10 * i) for i, n in enumerate([5, 3, 4, 2, 6, 1])]
    rows = bench.pack_best_fit(examples, max_length=8)
    assert [row["seq_lengths"] for row in rows] == [[6, 2], [5, 3], [4, 1]]
    assert rows[0]["input_ids"] == list(range(40, 46)) + [30, 31]
    assert rows[0]["labels"] == [-100, *range(41, 46), -100, 31]


def test_a_padding_free_batch_has_the_loss_of_its_examples_one_by_one(bench):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64))
    model.eval()
    examples = [_example(7, 3, 1), _example(5, 2, 20), _example(6, 4, 40)]
    batch = bench.flatten_packed(bench.pack_best_fit(examples, max_length=12))
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]]
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert answer_tokens == 4 + 3 + 2
    with torch.no_grad():
        # use_cache=False as Trainer sets it (TrainingArguments.use_cache): with a cache, transformers does not
        # read packed sequences from the positions, and the examples attend to each other.
        packed = model(**batch, use_cache=False).loss * answer_tokens
        alone = sum(
            model(input_ids=torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]])).loss
            * (torch.tensor(e["labels"][1:]) != -100).sum()
            for e in examples
        )
        with_cache = model(**batch, use_cache=True).loss * answer_tokens
    assert float(packed) == pytest.approx(float(alone), rel=1e-5)
    assert float(with_cache) != pytest.approx(float(alone), rel=1e-3)


@pytest.mark.parametrize("text, number", [
    ("so 48+24 = <<48+24=72>>72 clips.\n#### 72", "72"),
    ("#### 1,250", "1250"),
    ("The answer is 3.5.", "3.5"),
    ("It costs $-4 then 10 more, 6 in all.", "6"),
    ("no number", None),
])
def test_final_number(bench, text, number):
    assert bench.final_number(text) == number


def test_training_flops_per_token_counts_frozen_adapter_and_attention_work(bench, tmp_path):
    """4 N for the frozen linear layers (the LM head's matmul included), 6 N for the adapters, 12 L d t."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=True).save_pretrained(tmp_path)
    kv = 16 // 4 * 2  # two key / value heads of 4
    per_layer = 16 * 16 * 2 + 16 * kv * 2 + 16 * 32 * 3  # q, o; k, v; gate, up, down
    frozen = 2 * per_layer + 100 * 16  # and the (tied) LM head's matmul
    adapters = 2 * 4 * ((16 + 16) * 2 + (16 + kv) * 2 + (16 + 32) * 3)  # r 4: r (in + out) per projection
    assert bench.training_flops_per_token(tmp_path, 4, 10.0) == 4 * frozen + 6 * adapters + 12 * 2 * 16 * 10.0
