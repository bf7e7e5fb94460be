"""Causal-LM generation: batched left-padded greedy answers equal one-at-a-time ones, the scores (normalised exact
match, ROUGE-L) on fixed strings, generation metrics inside Trainer's evaluation (logged, best-model metric,
shares across processes), and prediction to a streamed jsonl from a merged model or a LoRA adapter."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from ftlib.tasks import causal_lm_generate as gen
from ftlib.tasks import causal_lm_predict as pred
from ftlib.tasks.causal_lm_generate import (
    GenerationEval,
    GenerationEvalMixin,
    encode_prompt,
    exact_match,
    generate_answers,
    normalize_answer,
    rouge_l,
    score_generations,
    worst_examples_table,
)
from ftlib.tasks.causal_lm_predict import PromptFileError, predict_jsonl, read_prompts

pytestmark = pytest.mark.usefixtures("one_thread")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "Question: what is two plus two?\nAnswer:\n",
    "Hi",
    "Write one word about the sea, then stop. The sea is",
    "Question: name a colour.\nAnswer:\n",
    "One two three four five six seven eight nine ten eleven twelve",
]


@pytest.fixture
def llama(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)


# -- generation ---------------------------------------------------------------------------------------------------
def test_left_padded_batches_equal_one_prompt_at_a_time(llama):
    model, tokenizer = llama
    model.train()  # restored afterwards
    lengths = {len(encode_prompt(tokenizer, p, chat=False)) for p in PROMPTS}
    assert len(lengths) >= 4  # the batch is really padded
    batched = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=5)
    alone = [generate_answers(model, tokenizer, [p], max_new_tokens=8, batch_size=1)[0] for p in PROMPTS]
    assert batched == alone
    assert all(answer for answer in batched)  # a random model rarely emits EOS first: text to compare
    assert len(set(batched)) > 1
    assert model.training and tokenizer.padding_side == "right"


def test_answers_hold_only_new_tokens_and_stop_at_eos(llama):
    model, tokenizer = llama
    prompt = PROMPTS[0]
    ids = tokenizer(prompt, return_tensors="pt")
    model.generation_config.eos_token_id = None
    full = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    new = full[0, ids["input_ids"].shape[1]:].tolist()
    assert tokenizer.decode(new, skip_special_tokens=True).strip() == generate_answers(
        model, tokenizer, [prompt], max_new_tokens=6)[0]
    # The model's third new token declared an end-of-answer token: the answer is what comes before its first use.
    stop = new[2]
    model.generation_config.eos_token_id = stop
    cut = new[: new.index(stop)]
    assert generate_answers(model, tokenizer, [prompt], max_new_tokens=6)[0] == tokenizer.decode(
        cut, skip_special_tokens=True).strip()


def test_chat_prompts_render_with_the_generation_prompt(llama):
    _, tokenizer = llama
    messages = [{"role": "user", "content": "What is 2+2?"}]
    ids = encode_prompt(tokenizer, messages, chat=True)
    text = tokenizer.decode(ids)
    assert text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text
    assert text.count("<|im_start|>system") == 1  # the template's default system turn, once
    assert encode_prompt(tokenizer, "What is 2+2?", chat=True) == ids  # a string with chat: one user turn
    assert encode_prompt(tokenizer, "What is 2+2?", chat=False) == tokenizer("What is 2+2?")["input_ids"]


def test_a_peft_model_generates_and_a_fresh_adapter_changes_nothing(llama):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = llama
    base = generate_answers(model, tokenizer, PROMPTS[:3], max_new_tokens=5, batch_size=3, chat=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert generate_answers(peft_model, tokenizer, PROMPTS[:3], max_new_tokens=5, batch_size=3, chat=True) == base


def test_a_tokenizer_without_pad_token_borrows_eos_and_gets_it_back(llama):
    model, tokenizer = llama
    with_pad = generate_answers(model, tokenizer, PROMPTS[:2], max_new_tokens=4, batch_size=2)
    tokenizer.pad_token = None
    assert generate_answers(model, tokenizer, PROMPTS[:2], max_new_tokens=4, batch_size=2) == with_pad
    assert tokenizer.pad_token is None


# -- scores -------------------------------------------------------------------------------------------------------
def test_normalize_and_exact_match():
    assert normalize_answer("  The Cat, sat  on A mat! ") == "cat sat on mat"
    assert normalize_answer("An apple-pie.") == "applepie"
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("the answer is 72", "72") == 0.0
    assert exact_match("#### 72", "72") == 1.0


def test_rouge_l_values_pinned():
    assert rouge_l("the cat sat on the mat", "the cat lay on the mat") == pytest.approx(5 / 6)
    # LCS "the cat" of 2 words: precision 2/2, recall 2/6, F1 = 2PR / (P + R) = 0.5
    assert rouge_l("the cat", "the cat lay on the mat") == pytest.approx(0.5)
    assert rouge_l("dogs", "cats") == 0.0
    assert rouge_l("Paris!", "paris") == 1.0  # rouge-score's tokenizer lowercases and drops punctuation


def test_score_generations_means_and_worst_table():
    predictions = ["Paris", "the cat sat on the mat", "nothing like it"]
    references = ["paris.", "the cat lay on the mat", "a | b"]
    scores = score_generations(predictions, references)
    assert scores.exact_match == pytest.approx(1 / 3)
    assert scores.rougeL == pytest.approx((1 + 5 / 6 + 0) / 3)
    assert scores.metrics("eval_") == {"eval_exact_match": scores.exact_match, "eval_rougeL": scores.rougeL}
    assert [s["rougeL"] for s in scores.per_example] == pytest.approx([1.0, 5 / 6, 0.0])
    prompts = ["capital of France?", [{"role": "user", "content": "describe"}], "anything"]
    table = worst_examples_table(prompts, references, predictions, scores, k=2).splitlines()
    assert table[2] == "| 1 | anything | a \\| b | nothing like it | 0 | 0.000 |"
    assert table[3] == "| 2 | user: describe | the cat lay on the mat | the cat sat on the mat | 0 | 0.833 |"
    assert len(table) == 4
    with pytest.raises(ValueError, match="2 predictions for 3 references"):
        score_generations(predictions[:2], references)


# -- during training ----------------------------------------------------------------------------------------------
def _lm_rows(tokenizer, texts):
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids})
    return rows


def test_trainer_logs_generation_metrics_and_picks_the_best_by_them(llama, tmp_path):
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    model, tokenizer = llama
    prompts = PROMPTS[:3]
    own = generate_answers(model, tokenizer, prompts, max_new_tokens=4)

    class GenTrainer(GenerationEvalMixin, Trainer):
        pass

    class KeepAnswers(TrainerCallback):  # each evaluation's answers, by step
        def __init__(self, spec):
            self.spec, self.by_step = spec, {}

        def on_evaluate(self, args, state, control, **kwargs):
            self.by_step[state.global_step] = list(self.spec.last_predictions)

    def run(references, name):
        spec = GenerationEval(prompts=prompts, references=references, max_new_tokens=4, batch_size=2)
        keep = KeepAnswers(spec)
        args = TrainingArguments(
            output_dir=str(tmp_path / name), report_to="none", use_cpu=True, seed=0, max_steps=2,
            per_device_train_batch_size=2, learning_rate=2e-2, lr_scheduler_type="constant", eval_strategy="steps",
            eval_steps=1, save_strategy="steps", save_steps=1, load_best_model_at_end=True,
            metric_for_best_model="rougeL", logging_strategy="steps", logging_steps=1, disable_tqdm=True,
        )
        rows = _lm_rows(tokenizer, PROMPTS)
        trainer = GenTrainer(model=AutoModelForCausalLM.from_pretrained(tmp_path / "start"), args=args,
                             train_dataset=rows, eval_dataset=rows[:2], data_collator=DataCollatorForSeq2Seq(tokenizer),
                             processing_class=tokenizer, generation_eval=spec, callbacks=[keep])
        return trainer, spec, keep

    model.save_pretrained(tmp_path / "start")
    # Before training, the model's own answer is the reference for the first prompt: exact match 1/3.
    trainer, spec, keep = run([own[0], "unrelated words", "more unrelated words"], "first")
    before = trainer.evaluate()
    assert before["eval_exact_match"] == pytest.approx(1 / 3)
    assert spec.last_predictions == own
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evals) == 2 and all("eval_rougeL" in e and "eval_exact_match" in e for e in evals)
    assert keep.by_step[1] != keep.by_step[2]  # training moved the answers
    # The same run again, the answers after step 1 the references: the best checkpoint is step 1's, by ROUGE-L.
    trainer, spec, keep = run(keep.by_step[1], "second")
    trainer.train()
    evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evals[0]["eval_exact_match"] == 1.0 and evals[0]["eval_rougeL"] == 1.0
    assert evals[1]["eval_rougeL"] < 1.0
    assert trainer.state.best_metric == 1.0
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-1")
    assert "| 1 |" in spec.table(k=2)
    # predict() runs the same loop, under "test": no generation there
    assert "test_rougeL" not in trainer.predict(_lm_rows(tokenizer, PROMPTS[:2])).metrics


def test_processes_generate_contiguous_shares_gathered_in_order(monkeypatch):
    """Five prompts over three processes: padded shares (2, 2, 1+1), every answer once, in the prompts' order."""
    from accelerate.state import PartialState

    class Process:
        def __init__(self, index):
            self.process_index, self.num_processes = index, 3

        def split_between_processes(self, inputs, apply_padding=False):
            return PartialState.split_between_processes(self, inputs, apply_padding)

    shares, results, outputs = {}, [None] * 3, [None] * 3
    barrier = threading.Barrier(3)

    def fake_generate(model, tokenizer, prompts, **kwargs):
        shares[model] = list(prompts)
        return [f"answer to {p}" for p in prompts]

    def fake_gather(pairs):  # every process's list, concatenated in process order, on every process
        rank = threading.current_thread().rank
        results[rank] = pairs
        barrier.wait()
        return [pair for result in results for pair in result]

    monkeypatch.setattr(gen, "generate_answers", fake_generate)
    monkeypatch.setattr(gen, "gather_object", fake_gather)
    spec = GenerationEval(prompts=list("abcde"), references=list("abcde"))

    def process(rank):
        threading.current_thread().rank = rank
        outputs[rank] = gen.distributed_generate(Process(rank), rank, None, spec)

    threads = [threading.Thread(target=process, args=(rank,)) for rank in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert shares == {0: ["a", "b"], 1: ["c", "d"], 2: ["e", "e"]}
    assert outputs == [[f"answer to {p}" for p in "abcde"]] * 3


# -- predict ------------------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CHAT = [{"role": "user", "content": "What is 2+2?"}]
ROWS = [{"id": "q1", "prompt": PROMPTS[0]}, {"id": "q2", "messages": CHAT}, {"prompt": PROMPTS[2]},
        {"id": 7, "prompt": PROMPTS[3]}, {"messages": CHAT + [{"role": "assistant", "content": "4"},
                                                             {"role": "user", "content": "And 3+3?"}]}]


def test_predict_streams_answers_with_ids_from_a_merged_folder(llama, tiny_llama_dir, tmp_path, monkeypatch):
    model, tokenizer = llama
    source = _write_jsonl(tmp_path / "in.jsonl", ROWS)
    output = tmp_path / "sub" / "answers.jsonl"
    partial = output.parent / ".answers.jsonl.partial"
    seen_on_disk = []
    generate = pred.generate_answers

    def watched(*args, **kwargs):  # what the partial file holds when each batch starts
        seen_on_disk.append(len(partial.read_text().splitlines()))
        return generate(*args, **kwargs)

    monkeypatch.setattr(pred, "generate_answers", watched)
    assert predict_jsonl(tiny_llama_dir, source, output, max_new_tokens=5, batch_size=2) == output
    assert seen_on_disk == [0, 2, 4]  # flushed after every batch
    assert not partial.exists()
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q1", "q2", 2, 7, 4]
    prompts = [r.get("prompt", r.get("messages")) for r in ROWS]
    assert [r["generated"] for r in rows] == generate(model, tokenizer, prompts, max_new_tokens=5, batch_size=1)


def test_predict_from_an_adapter_folder_applies_the_adapter(llama, tiny_llama_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = llama
    base_answers = generate_answers(model, tokenizer, PROMPTS, max_new_tokens=5)
    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapter changes the outputs
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  init_lora_weights=False))
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_llama_dir)
    expected = generate_answers(peft_model, tokenizer, PROMPTS, max_new_tokens=5)
    assert expected != base_answers
    source = _write_jsonl(tmp_path / "in.jsonl", [{"prompt": p} for p in PROMPTS])
    output = predict_jsonl(adapter_dir, source, tmp_path / "out.jsonl", max_new_tokens=5, batch_size=3)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert rows == [{"id": i, "generated": a} for i, a in enumerate(expected)]


def test_predict_reads_a_csv_prompt_column(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('id,prompt\na,"Hello, there"\n,second\n')
    assert read_prompts(path) == [("a", "Hello, there"), (1, "second")]


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "ok"}, {"question": "hi"}],
     r"in.jsonl line 2: a row needs a 'prompt' string or a 'messages' list; it has \['question'\]"),
    ([{"prompt": "ok"}, "", {"prompt": ""}], r"in.jsonl line 3: 'prompt' is empty"),
    (['{"prompt": "ok"', {"prompt": "fine"}], r"in.jsonl line 1: not valid JSON"),
    ([{"messages": [{"content": "no role"}]}], r"in.jsonl line 1: turn 0 of 'messages' needs a 'role'"),
    ([["a list"]], r"in.jsonl line 1: a row must be a JSON object, found list"),
])
def test_bad_rows_are_named_before_the_model_loads(tmp_path, rows, message):
    source = _write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(PromptFileError, match=message):
        predict_jsonl(tmp_path / "no-model", source, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_files_are_named(tmp_path, tiny_llama_dir):
    with pytest.raises(FileNotFoundError, match="prompt file not found: .*nothing.jsonl"):
        predict_jsonl(tiny_llama_dir, tmp_path / "nothing.jsonl", tmp_path / "out.jsonl")
    source = _write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    with pytest.raises(FileNotFoundError, match="no-model is not a model folder"):
        predict_jsonl(tmp_path / "no-model", source, tmp_path / "out.jsonl")
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("text\nhello\n")
    with pytest.raises(PromptFileError, match=r"in.csv: no 'prompt' column \(columns: \['text'\]\)"):
        read_prompts(csv_file)
