"""recipes/causal_lm.py end to end on a tiny random Llama with SmolLM2's tokenizer and chat template: LoRA and full
fine-tuning, the four data shapes' chat case, packing, generation scores, the outputs (adapter or merged model,
tokenizer with its template, generation config), ftlib-predict and transformers' pipeline on them, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import causal_lm
import pytest
import torch
from transformers import TrainingArguments

from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.causal_lm import CausalLMDataArguments
from ftlib.training.arguments import CausalLMModelArguments

pytestmark = pytest.mark.usefixtures("one_thread")
PARSE = (CausalLMModelArguments, CausalLMDataArguments, FineTuneArguments, TrainingArguments)
ANSWERS = {"red": "ROJO", "blue": "AZUL", "green": "VERDE", "white": "BLANCO"}


def chats(path: Path, rows: int = 24) -> Path:
    colours = list(ANSWERS)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(rows):
            colour = colours[i % len(colours)]
            turns = [{"role": "system", "content": "Answer in Spanish capitals."},
                     {"role": "user", "content": f"Colour {colour}?"},
                     {"role": "assistant", "content": ANSWERS[colour]}]
            handle.write(json.dumps({"messages": turns}) + "\n")
    return path


def run(tmp_path: Path, model_dir: Path, *extra: str, rows: int = 24) -> tuple[dict, Path]:
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(model_dir), "--train_file", str(chats(tmp_path / "train.jsonl", rows)),
            "--validation_file", str(chats(tmp_path / "validation.jsonl", 8)), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--max_steps", "6",
            "--learning_rate", "5e-3", "--use_cpu", "true", "--seed", "0", "--max_seq_length", "64",
            "--save_strategy", "no", "--eval_strategy", "no", "--max_new_tokens", "4", *extra]
    metrics = causal_lm.main(*parse_args(PARSE, argv, defaults=causal_lm.RECIPE_DEFAULTS))
    return metrics, out


def test_lora_chat_run_writes_an_adapter_that_ftlib_predict_answers_with(tmp_path, tiny_llama_dir):
    _, out = run(tmp_path, tiny_llama_dir, "--generation_eval", "4")
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_perplexity"] == pytest.approx(float(__import__("math").exp(results["eval_token_loss"])))
    assert {"eval_exact_match", "eval_rougeL", "eval_loss"} <= set(results)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    assert (out / "generation_config.json").is_file() and (out / "MANIFEST.sha256.json").is_file()
    saved = json.loads((out / "tokenizer_config.json").read_text())
    assert "chat_template" in saved or (out / "chat_template.jinja").is_file()
    strategy = json.loads((out / "ftlib_strategy.json").read_text())
    assert strategy["lora"] is True and strategy["data_format"] == "messages"
    assert "| prompt | reference | generated |" in (out / "report" / "worst_generations.md").read_text()
    card = (out / "README.md").read_text()
    assert "text-generation" in card and 'pipeline("text-generation"' in card

    from ftlib.outputs.predict import predict

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": f"Colour {c}?"}]})
                                 for i, c in enumerate(["red", "blue", "green"])) + "\n")
    written = predict(out, prompts, tmp_path / "answers.jsonl", progress=False)
    rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and all(isinstance(r["generated"], str) for r in rows)


def test_full_fine_tuning_learns_the_answers_and_a_merged_pipeline_says_them(tmp_path, tiny_llama_dir):
    """Full fine-tuning of the tiny model on four fixed answers: the training loss falls, and the saved model answers
    through ``transformers.pipeline`` with its own chat template."""
    _, out = run(tmp_path, tiny_llama_dir, "--lora", "false", "--max_steps", "40", "--learning_rate", "1e-2")
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]
    assert (out / "model.safetensors").is_file()
    from transformers import pipeline

    generate = pipeline("text-generation", model=str(out), device="cpu")
    answer = generate([{"role": "user", "content": "Colour blue?"}], max_new_tokens=4, do_sample=False)
    assert isinstance(answer[0]["generated_text"], list)  # the chat, the model's answer appended


def test_merged_lora_output_is_a_plain_model_with_the_adapters_outputs(tmp_path, tiny_llama_dir):
    """--lora_save merged: a plain transformers folder (no adapter files) whose logits are the trained adapter's."""
    _, out = run(tmp_path, tiny_llama_dir, "--lora_save", "merged", "--max_steps", "4")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_model.safetensors").exists()
    from transformers import AutoModelForCausalLM, pipeline

    merged, base = (AutoModelForCausalLM.from_pretrained(path) for path in (out, tiny_llama_dir))
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert not torch.allclose(merged(ids).logits, base(ids).logits)  # the adapter's change is in the weights
    answer = pipeline("text-generation", model=str(out), device="cpu")("Colour red?", max_new_tokens=3, do_sample=False)
    assert answer[0]["generated_text"].startswith("Colour red?")


def test_lr_find_sweeps_the_decoder_and_keeps_nothing(tmp_path, tiny_llama_dir):
    _, out = run(tmp_path, tiny_llama_dir, "--lr_find", "true", "--lr_find_steps", "12")
    assert sorted(p.name for p in out.iterdir()) == ["lr_find.png"]  # the sweep's plot, no model, no checkpoint


def test_hp_search_maximises_a_generation_score_and_trains_the_best_trial(tmp_path, tiny_llama_dir):
    """--hp_search on a decoder, scored by the generated answers' ROUGE-L (maximised): every trial trains and
    generates, and the final model trains with the best trial's values, recorded for --config."""
    import yaml

    metrics, out = run(tmp_path, tiny_llama_dir, "--hp_search", "2", "--generation_eval", "4",
                       "--metric_for_best_model", "rougeL", "--eval_strategy", "steps", "--eval_steps", "3")
    search = json.loads((out / "hp_search.json").read_text())
    assert (search["metric"], search["direction"], search["trials"]) == ("eval_rougeL", "maximize", 2)
    assert "head_learning_rate" not in search["space"]  # the LM head is frozen under LoRA: its rate changes nothing
    assert [t["state"] for t in search["per_trial"]] == ["complete", "complete"]
    assert search["best"]["value"] == max(t["value"] for t in search["per_trial"])
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["hp_search"] == 0 and config["learning_rate"] == pytest.approx(search["best"]["params"]["learning_rate"])
    assert "eval_rougeL" in metrics and (out / "adapter_model.safetensors").is_file()


def test_new_tokens_grow_the_vocabulary_and_their_rows_train_under_lora(tmp_path, tiny_llama_dir):
    """--new_tokens: the tokenizer and embeddings grow by the new markers, the data keeps each marker whole, and the
    new rows train (peft's trainable tokens) while the old ones stay as they were; frozen embeddings refuse."""
    template = ("{% for m in messages %}<|turn|>{{ m.role }}\n{{ m.content }}<|end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|turn|>assistant\n{% endif %}")
    _, out = run(tmp_path, tiny_llama_dir, "--new_tokens", "<|turn|>", "<|end|>", "--chat_template", template)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.convert_tokens_to_ids(["<|turn|>", "<|end|>"])
    assert min(ids) >= len(AutoTokenizer.from_pretrained(tiny_llama_dir))  # new ids, past the old vocabulary
    assert tokenizer("<|turn|>user", add_special_tokens=False)["input_ids"][0] == ids[0]  # one token, not split
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any("trainable_tokens" in key for key in saved)  # the new rows, saved with the adapter
    with pytest.raises(ValueError, match="freeze"):
        (tmp_path / "frozen").mkdir()
        run(tmp_path / "frozen", tiny_llama_dir, "--new_tokens", "<|x|>", "--freeze_embeddings", "true")


def test_packing_trains_and_evaluates_unpacked(tmp_path, tiny_llama_dir):
    metrics, out = run(tmp_path, tiny_llama_dir, "--packing", "true")
    assert metrics["eval_perplexity"] > 1.0 and (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("flags", "message"), [
    (["--cv_folds", "3"], "--cv_folds: not supported for causal LMs"),
    (["--load_in_4bit", "true"], "CUDA"),
])
def test_refused_before_anything_is_written(tmp_path, tiny_llama_dir, flags, message):
    with pytest.raises(ValueError, match=message):
        run(tmp_path, tiny_llama_dir, *flags)
    assert not (tmp_path / "out").exists()


def clm_command(model_dir: Path, train: Path, validation: Path, out: Path, processes: int, *extra) -> list:
    """The causal-LM recipe on ``processes`` CPU processes, global batch 8, LoRA, a checkpoint every 2 steps."""
    from test_multiprocess import free_port

    launcher = [sys.executable] if processes == 1 else [
        Path(sys.executable).with_name("accelerate"), "launch", "--multi_gpu", "--num_processes", processes,
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port()]
    return [*launcher, "recipes/causal_lm.py", "--model_name_or_path", model_dir, "--train_file", train,
            "--validation_file", validation, "--output_dir", out, "--use_cpu", "true", "--max_steps", 6,
            "--save_strategy", "steps", "--save_steps", 2, "--eval_strategy", "no", "--logging_steps", 1,
            "--per_device_train_batch_size", 8 // processes, "--per_device_eval_batch_size", 4,
            "--train_sampling_strategy", "random", "--learning_rate", "5e-3", "--seed", 3, "--lora_dropout", 0,
            "--max_seq_length", 64, "--disable_tqdm", "true", "--dataloader_pin_memory", "false", *extra]


def step_losses(out: Path) -> list[float]:
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_two_processes_train_as_one_on_the_mean_over_all_answer_tokens(tmp_path, tiny_llama_dir, recipe_process):
    """2 x 4 rows in two gloo processes against 8 rows in one: the step losses (the answer-token mean over the whole
    global batch, whatever the split of its tokens between the ranks) and the adapter agree."""
    train, validation = chats(tmp_path / "train.jsonl", 32), chats(tmp_path / "validation.jsonl", 8)
    for processes in (1, 2):
        recipe_process(clm_command(tiny_llama_dir, train, validation, tmp_path / f"p{processes}", processes),
                       tmp_path / f"rec-{processes}").wait()
    one, two = step_losses(tmp_path / "p1"), step_losses(tmp_path / "p2")
    assert len(one) == len(two) == 6 and max(one) - min(one) > 1e-3
    assert two == pytest.approx(one, rel=1e-4)
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / f"p{n}" / "adapter_model.safetensors")) for n in (1, 2))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4


@pytest.mark.slow
def test_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, tiny_llama_dir, recipe_process):
    train, validation = chats(tmp_path / "train.jsonl", 32), chats(tmp_path / "validation.jsonl", 8)
    whole = recipe_process(clm_command(tiny_llama_dir, train, validation, tmp_path / "whole", 1), tmp_path / "rec-w")
    whole.wait()
    out = tmp_path / "killed"
    killed = recipe_process(clm_command(tiny_llama_dir, train, validation, out, 1), tmp_path / "rec-k", pause="step:5")
    assert killed.kill_when_paused() == "before step 5, micro-batch 0"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    recipe_process(clm_command(tiny_llama_dir, train, validation, out, 1), tmp_path / "rec-r").wait()
    from safetensors.torch import load_file

    a, b = (load_file(str(folder / "adapter_model.safetensors")) for folder in (out, tmp_path / "whole"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert step_losses(out) == step_losses(tmp_path / "whole")
