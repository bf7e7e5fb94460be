"""The text-classification recipe end to end on a tiny BERT, its data formats, and its bad-input errors."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
import text_cls
from transformers import AutoConfig, TrainingArguments

from ftlib.outputs.integrity import verify_manifest
from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.training.arguments import ModelArguments

ROOT = Path(__file__).resolve().parents[1]
POSITIVE = ["a wonderful and moving film", "great acting and a clever plot", "I loved every minute of it",
            "superb, warm and funny", "a delight from start to finish", "brilliant work by the whole cast",
            "charming story told with great care", "funny, smart and beautifully shot"]
NEGATIVE = ["a dull and lifeless mess", "terrible acting and a stupid plot", "I hated every minute of it",
            "boring, cold and tedious", "a chore from start to finish", "awful work by the whole cast",
            "clumsy story told with no care", "unfunny, dumb and ugly to look at"]


def write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def sentiment_rows(repeat: int = 3) -> list[dict]:
    rows = [{"text": t, "label": "pos"} for t in POSITIVE] + [{"text": t, "label": "neg"} for t in NEGATIVE]
    return [dict(r, id=f"r{i}") for i, r in enumerate(rows * repeat)]


def run(argv: list[str]) -> dict:
    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=text_cls.RECIPE_DEFAULTS)
    return text_cls.main(*args)


def base_argv(model_dir, train, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--use_cpu", "true",
            "--learning_rate", "2e-3", "--head_learning_rate", "2e-3", "--num_train_epochs", "3",
            "--freeze_embeddings", "false",  # the tiny model's embeddings are random: they must learn
            "--save_strategy", "no", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", *map(str, extra)]


def test_end_to_end_learns_and_writes_every_output(tiny_bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(4))
    val = write_csv(tmp_path / "val.csv", sentiment_rows(1))
    test = write_csv(tmp_path / "test.csv", [{"id": f"t{i}", "text": t} for i, t in enumerate(POSITIVE[:3] + NEGATIVE[:3])])
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_bert_dir, train, out, "--validation_file", val, "--test_file", test,
                            "--id_column", "id", "--num_train_epochs", "8"))
    assert metrics["eval_accuracy"] >= 0.9, metrics  # keyword sentiment is learnable by a 2-layer model
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] == metrics["eval_accuracy"] and "train_loss" in results
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == {0: "neg", 1: "pos"} and config.label2id == {"neg": 0, "pos": 1}
    assert (out / "model.safetensors").is_file() and [p.name for p in out.glob("*.bin")] == ["training_args.bin"]
    assert (out / "tokenizer.json").is_file()
    with (out / "test_predictions.csv").open() as handle:
        preds = list(csv.DictReader(handle))
    assert [p["id"] for p in preds] == [f"t{i}" for i in range(6)]
    assert [p["prediction"] for p in preds] == ["pos"] * 3 + ["neg"] * 3
    assert all(0.5 <= float(p["score"]) <= 1.0 for p in preds)
    card = (out / "README.md").read_text()
    assert str(tiny_bert_dir) in card and "eval_accuracy" in card and "layer_decay" not in card.split("## Results")[0]
    assert verify_manifest(out) == []


@pytest.mark.parametrize("suffix", [".tsv", ".jsonl", ".json", ".parquet"])
def test_file_formats(tiny_bert_dir, tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame(sentiment_rows(2))
    path = tmp_path / f"train{suffix}"
    if suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl" or suffix == ".json":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    metrics = run(base_argv(tiny_bert_dir, path, tmp_path / "out", "--num_train_epochs", "1"))
    assert metrics["eval_samples"] == 4  # 10% of 32 rows, rounded up by the stratified split
    assert set(json.loads((tmp_path / "out" / "config.json").read_text())["label2id"]) == {"neg", "pos"}


def test_pairs_integer_labels_and_stratified_validation(tiny_bert_dir, tmp_path):
    rows = [{"premise": t, "hypothesis": t.split()[0], "label": i % 3} for i, t in enumerate((POSITIVE + NEGATIVE) * 3)]
    train = write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_bert_dir, train, out, "--text_column", "premise", "--text_pair_column", "hypothesis",
                            "--validation_split_percentage", "25", "--num_train_epochs", "1"))
    assert metrics["eval_samples"] == 12  # 25% of 48 rows, 4 of each of the three classes
    assert AutoConfig.from_pretrained(out).id2label == {0: "0", 1: "1", 2: "2"}


def test_multi_label_and_regression(tiny_bert_dir, tmp_path):
    multi = tmp_path / "multi.jsonl"
    with multi.open("w") as handle:
        for i, text in enumerate((POSITIVE + NEGATIVE) * 2):
            labels = ["film"] + (["good"] if text in POSITIVE else ["bad"]) + (["short"] if len(text) < 28 else [])
            handle.write(json.dumps({"text": text, "tags": labels}) + "\n")
    metrics = run(base_argv(tiny_bert_dir, multi, tmp_path / "m", "--label_column", "tags", "--num_train_epochs", "1"))
    assert {"eval_micro_f1", "eval_macro_f1", "eval_subset_accuracy"} <= set(metrics)
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert config.problem_type == "multi_label_classification" and len(config.id2label) == 4

    reg = write_csv(tmp_path / "reg.csv", [{"text": t, "label": float(i % 5) / 4} for i, t in enumerate((POSITIVE + NEGATIVE) * 2)])
    metrics = run(base_argv(tiny_bert_dir, reg, tmp_path / "r", "--num_train_epochs", "1"))
    assert {"eval_mse", "eval_pearson", "eval_spearman"} <= set(metrics)
    assert AutoConfig.from_pretrained(tmp_path / "r").problem_type == "regression"


def test_head_tail_truncation_keeps_both_ends(tiny_bert_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from ftlib.data.text import tokenize_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = [f"w{i}" for i in range(200)]
    data = Dataset.from_dict({"text": [" ".join(words)], "labels": [0]})
    plain = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    out = tokenize_text(data, tokenizer, "text", None, max_length=34, truncation="head_tail", head_fraction=0.25)
    ids = out[0]["input_ids"]
    assert len(ids) == 34 and out[0]["length"] == 34
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert ids[1:9] == plain[:8] and ids[9:-1] == plain[-24:]  # 32-token budget: 8 from the head, 24 from the tail
    head = tokenize_text(data, tokenizer, "text", None, max_length=34)
    assert head[0]["input_ids"][1:-1] == plain[:32]


def test_batches_are_padded_dynamically_and_grouped_by_length(tiny_bert_dir, tmp_path):
    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
                      ["--model_name_or_path", str(tiny_bert_dir), "--train_file", "x.csv", "--output_dir", str(tmp_path)],
                      defaults=text_cls.RECIPE_DEFAULTS)
    assert args[3].train_sampling_strategy == "group_by_length"
    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
                      ["--model_name_or_path", "m", "--train_file", "x.csv", "--train_sampling_strategy", "random"],
                      defaults=text_cls.RECIPE_DEFAULTS)
    assert args[3].train_sampling_strategy == "random"  # the command line overrides the recipe's default


@pytest.mark.parametrize("config", sorted((ROOT / "recipes/configs/text_cls").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_parses(config):
    model_args, data_args, _, training_args = parse_args(
        (ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
        ["--config", str(config), "--use_cpu", "true"],  # bf16 configs are meant for GPUs
        defaults=text_cls.RECIPE_DEFAULTS)
    assert model_args.model_name_or_path and training_args.output_dir
    assert data_args.train_file or data_args.dataset_name


# -- bad input: a clear error before training, nothing lost ---------------------------------------------------


@pytest.fixture
def finished_dir(tmp_path) -> Path:
    """An output directory holding an earlier finished model, which no failing run may touch."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"earlier result")
    return out


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def bad_input_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = write_csv(tmp_path / "good.csv", sentiment_rows(1))
    cases = {
        "missing text column": (["--train_file", good, "--text_column", "review"], r"no column 'review'.*columns are text, label, id"),
        "missing label column": (["--train_file", good, "--label_column", "sentiment"], r"no column 'sentiment'.*text, label, id"),
        "empty file": (["--train_file", tmp_path / "empty.csv"], r"data file is empty: .*empty.csv"),
        "header only": (["--train_file", tmp_path / "header.csv"], r"no rows: .*header.csv"),
        "unseen validation label": (["--train_file", good, "--validation_file", tmp_path / "val.csv"],
                                    r"val.csv: label 'meh' \(data row 1\) does not occur in the training data"),
        "unseen test label": (["--train_file", good, "--test_file", tmp_path / "test.csv"],
                              r"test.csv: label 'meh'"),
        "single class": (["--train_file", tmp_path / "one.csv"], r"one.csv: column 'label' has a single class \(pos\)"),
        "non-UTF-8": (["--train_file", tmp_path / "latin1.csv"], r"latin1.csv is not UTF-8: line 3"),
        "bad layer_decay": (["--train_file", good, "--layer_decay", "1.5"], r"--layer_decay must be in \(0, 1\], got 1.5"),
        "optimizer that needs the model": (["--train_file", good, "--optim", "galore_adamw"],
                                           r"--optim galore_adamw builds its own parameter groups"),
        "unknown torch optimizer": (["--train_file", good, "--torch_optimizer", "Adamw"],
                                    r"--torch_optimizer 'Adamw' is not a torch.optim optimizer"),
        "too many frozen blocks": (["--train_file", good, "--freeze_lower_blocks", "5"], r"--freeze_lower_blocks=5 but the model has only 2 blocks"),
    }
    if importlib.util.find_spec("bitsandbytes") is None:
        cases["optimizer package not installed"] = (["--train_file", good, "--optim", "adamw_bnb_8bit"],
                                                    r"install `bitsandbytes`")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    write_csv(tmp_path / "val.csv", [{"text": "so so", "label": "meh"}, {"text": "great", "label": "pos"}])
    write_csv(tmp_path / "test.csv", [{"text": "fine", "label": "pos"}, {"text": "so so", "label": "meh"}])
    write_csv(tmp_path / "one.csv", [{"text": t, "label": "pos"} for t in POSITIVE])
    (tmp_path / "latin1.csv").write_bytes("text,label\ngood,pos\ncaf\xe9 au lait,neg\n".encode("latin-1"))
    return cases


def test_bad_inputs_fail_before_training_and_keep_earlier_results(tiny_bert_dir, tmp_path, finished_dir):
    import re

    before = snapshot(finished_dir)
    for name, (args, message) in bad_input_cases(tmp_path).items():
        argv = ["--model_name_or_path", str(tiny_bert_dir), "--output_dir", str(finished_dir),
                "--overwrite_output_dir", "true", "--use_cpu", "true", *map(str, args)]
        with pytest.raises((ValueError, ImportError)) as err:
            run(argv)
        assert re.search(message, str(err.value)), f"{name}: {err.value}"
        assert snapshot(finished_dir) == before, name
        assert not list(finished_dir.glob("checkpoint-*")), name


def test_finished_output_dir_is_not_overwritten(tiny_bert_dir, tmp_path, finished_dir):
    """Model files and their manifest: finished, refused. Model files without a manifest and no checkpoint to
    resume from (a final save cut short, or an output older than manifests): refused as unfinished (issue 11 item 5)."""
    from ftlib.outputs.integrity import write_manifest

    train = write_csv(tmp_path / "train.csv", sentiment_rows(1))
    before = snapshot(finished_dir)
    with pytest.raises(ValueError, match=r"holds an unfinished output \(model.safetensors but no MANIFEST.sha256.json"
                       r".*no complete checkpoint-\* folder.*--overwrite_output_dir"):
        run(base_argv(tiny_bert_dir, train, finished_dir))
    assert snapshot(finished_dir) == before
    write_manifest(finished_dir)
    before = snapshot(finished_dir)
    with pytest.raises(ValueError, match=r"already holds a finished model \(model.safetensors\).*--overwrite_output_dir"):
        run(base_argv(tiny_bert_dir, train, finished_dir))
    assert snapshot(finished_dir) == before


def test_head_size_mismatch_is_an_error(tiny_bert_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    three = tmp_path / "three-way"
    AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3).save_pretrained(three)
    train = write_csv(tmp_path / "train.csv", sentiment_rows(1))
    with pytest.raises(ValueError, match=r"head for 3 labels .* but the data has 2 \(neg, pos\).*--ignore_mismatched_sizes"):
        run(base_argv(three, train, tmp_path / "out"))
    assert not (tmp_path / "out" / "model.safetensors").exists()


# -- Hub: what would be pushed, and how -------------------------------------------------------------------------


def test_push_sends_the_right_folder_repo_revision_and_privacy(tiny_bert_dir, tmp_path, monkeypatch, fake_hub):
    secret = "hf_" + "SeCrEt" * 6
    monkeypatch.setenv("HF_TOKEN", secret)
    train = write_csv(tmp_path / "train.csv", sentiment_rows(2))
    out = tmp_path / "out"
    run(base_argv(tiny_bert_dir, train, out, "--push_to_hub", "true", "--hub_model_id", "me/sentiment",
                  "--hub_private_repo", "true", "--hub_revision", "v1", "--hub_token", secret,
                  "--save_strategy", "epoch", "--logging_steps", "1"))
    calls = dict(fake_hub)
    assert calls["init"]["token"] == secret
    assert calls["create_repo"]["repo_id"] == "me/sentiment" and calls["create_repo"]["private"] is True
    assert calls["create_branch"]["branch"] == "v1"
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "me/sentiment" and upload["revision"] == "v1" and upload["folder_path"] == str(out)
    pushed = set(upload["allow_patterns"])
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json", "all_results.json"} <= pushed
    assert not any(p.startswith("checkpoint-") or p.endswith((".bin", ".pt")) for p in pushed)
    for path in out.rglob("*"):  # the token is in no file written, checkpoints included
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_quality_gate_refuses_to_push(tiny_bert_dir, tmp_path, fake_hub):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(1))
    with pytest.raises(ValueError, match=r"not pushing: eval_accuracy = [\d.]+ is below the quality gate --push_min_metric=1.01"):
        run(base_argv(tiny_bert_dir, train, tmp_path / "out", "--num_train_epochs", "1", "--push_to_hub", "true",
                      "--hub_model_id", "me/x", "--push_min_metric", "1.01"))
    assert [name for name, _ in fake_hub] == ["init", "whoami"]  # the pre-flight check only: nothing pushed
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the result is kept locally


def test_hub_style_dataset_directory_and_sample_limits(tiny_bert_dir, tmp_path):
    """--dataset_name goes through datasets.load_dataset (a local dataset directory here, offline); the
    validation split is found by name and --max_*_samples cut each split."""
    data = tmp_path / "my_dataset"
    data.mkdir()
    write_csv(data / "train.csv", sentiment_rows(3))
    write_csv(data / "validation.csv", sentiment_rows(1))
    out = tmp_path / "out"
    metrics = run(["--model_name_or_path", str(tiny_bert_dir), "--dataset_name", str(data), "--output_dir", str(out),
                   "--use_cpu", "true", "--num_train_epochs", "1", "--save_strategy", "no", "--max_train_samples", "20",
                   "--max_eval_samples", "6", "--disable_tqdm", "true"])
    assert metrics["train_samples"] == 20 and metrics["eval_samples"] == 6


@pytest.mark.parametrize("save", ["adapter", "merged"])
def test_lora_run_saves_adapter_or_merged_model(tiny_bert_dir, tmp_path, save):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(2))
    out = tmp_path / save
    run(base_argv(tiny_bert_dir, train, out, "--num_train_epochs", "1", "--lora", "true", "--lora_r", "4",
                  "--lora_save", save))
    card = (out / "README.md").read_text()
    if save == "adapter":
        assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
        assert "library_name: peft" in card
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert sorted(adapter["target_modules"]) == ["query", "value"] and "classifier" in adapter["modules_to_save"]
    else:
        assert (out / "model.safetensors").is_file() and not (out / "adapter_model.safetensors").exists()
        assert "library_name: transformers" in card
        from safetensors.torch import load_file

        assert not any("lora" in key for key in load_file(out / "model.safetensors"))
    assert "| lora | True |" in card and "| lora_r | 4 |" in card


@pytest.mark.slow  # 252 steps; fast: test_small_data.py's budget tests
def test_default_training_budget_gives_small_sets_250_steps(tiny_bert_dir, tmp_path):
    # the recipe as shipped (the test session's fixture sets the budget to 0 for the other tests)
    spec = importlib.util.spec_from_file_location("text_cls_as_shipped", ROOT / "recipes" / "text_cls.py")
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    assert shipped.RECIPE_DEFAULTS["min_train_steps"] == 250
    train = write_csv(tmp_path / "train.csv", sentiment_rows(2))  # 32 rows, batch 8: 4 steps an epoch
    out = tmp_path / "out"
    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
                      base_argv(tiny_bert_dir, train, out), defaults=shipped.RECIPE_DEFAULTS)
    metrics = shipped.main(*args)
    state = json.loads((out / "trainer_state.json").read_text())
    # 90% of the rows train (10% validation): 29 rows, 4 steps an epoch, so 63 epochs = 252 steps
    assert state["global_step"] == 252 and metrics["epoch"] == 63
    evaluations = [e["step"] for e in state["log_history"] if "eval_loss" in e]
    assert evaluations[:3] == [84, 168, 252]  # as often as the 3 epochs asked for would have evaluated



def test_evaluating_during_training_does_not_change_the_trained_model(tiny_bert_dir, tmp_path):
    """The evaluation DataLoader draws a seed from torch's generator; FtTrainer.evaluate puts the generators back,
    so dropout masks and batch order (and so the model) are the same whether a run evaluates every 2 steps or never."""
    import torch
    from safetensors.torch import load_file

    train = write_csv(tmp_path / "train.csv", sentiment_rows(3))
    weights = {}
    for name, schedule in (("never", ["--eval_strategy", "no"]), ("every 2", ["--eval_strategy", "steps", "--eval_steps", "2"])):
        out = tmp_path / name.replace(" ", "-")
        run(base_argv(tiny_bert_dir, train, out, "--max_steps", "6", "--seed", "5", *schedule))
        weights[name] = load_file(str(out / "model.safetensors"))
    assert weights["never"].keys() == weights["every 2"].keys()
    assert all(torch.equal(weights["never"][k], weights["every 2"][k]) for k in weights["never"])
