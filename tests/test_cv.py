"""k-fold cross-validation (``--cv_folds``, issue 14 part 3): the folds themselves, the checks before anything loads,
and the text, token and image recipes end to end on tiny models."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path

import image_cls
import numpy as np
import pytest
import text_cls
import token_cls
from PIL import Image
from test_flags import write_csv  # the tests' shared csv writer
from transformers import TrainingArguments

from ftlib.outputs.integrity import verify_manifest
from ftlib.run.cli import ConfigError, parse_args
from ftlib.run.cv import make_folds
from ftlib.run.output_dir import LOCK_FILE
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.training.arguments import ModelArguments

POSITIVE = ["a wonderful and moving film", "great acting and a clever plot", "I loved every minute of it",
            "superb, warm and funny", "a delight from start to finish", "brilliant work by the whole cast"]
NEGATIVE = ["a dull and lifeless mess", "terrible acting and a stupid plot", "I hated every minute of it",
            "boring, cold and tedious", "a chore from start to finish", "awful work by the whole cast"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def text_rows() -> list[dict]:
    """30 rows, 2:1 positive to negative (20 / 10), in 10 speakers of three rows each (one speaker one label)."""
    rows = [{"id": f"p{i}", "text": f"{POSITIVE[i % 6]} #{i}", "label": "pos", "speaker": f"s{i // 3}"}
            for i in range(20)]
    rows += [{"id": f"n{i}", "text": f"{NEGATIVE[i % 6]} #{i}", "label": "neg", "speaker": f"s{7 + i // 3 % 3}"}
             for i in range(10)]
    return rows


def run_text(argv: list[str]) -> dict:
    return text_cls.main(*parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), argv,
                                     defaults=text_cls.RECIPE_DEFAULTS))


def text_argv(model_dir, train, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--use_cpu", "true",
            "--learning_rate", "2e-3", "--head_learning_rate", "2e-3", "--num_train_epochs", "2",
            "--freeze_embeddings", "false", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "3",
            "--dataloader_pin_memory", "false", "--validation_split_percentage", "20", *map(str, extra)]


# -- the folds --------------------------------------------------------------------------------------------------
def fold_of(folds: list[np.ndarray], num_rows: int) -> np.ndarray:
    """Each row's fold; asserts that the folds partition the rows exactly (every row held out once)."""
    held = np.concatenate(folds)
    assert sorted(held.tolist()) == list(range(num_rows))
    assert all(list(f) == sorted(f) for f in folds)
    owner = np.empty(num_rows, dtype=int)
    for k, f in enumerate(folds):
        owner[f] = k
    return owner


@pytest.mark.parametrize("stratified", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_folds_partition_the_rows_and_follow_the_seed(stratified, grouped):
    labels = [["a", "b", "c"][i % 7 % 3] for i in range(70)]
    groups = [f"g{i // 3}" for i in range(70)]
    make = lambda seed: make_folds(70, 5, seed, labels if stratified else None, groups if grouped else None)
    folds = make(7)
    owner = fold_of(folds, 70)
    assert len(folds) == 5 and {len(f) for f in folds} <= set(range(11, 17))
    assert [f.tolist() for f in make(7)] == [f.tolist() for f in folds]  # the same seed: the same folds
    assert [f.tolist() for f in make(8)] != [f.tolist() for f in folds]  # another seed: others
    if grouped:  # no group straddles two folds
        assert all(len({owner[i] for i in range(70) if groups[i] == g}) == 1 for g in set(groups))


def test_stratified_folds_keep_the_class_proportions():
    labels = ["pos"] * 45 + ["neg"] * 15 + ["mixed"] * 5  # 9 : 3 : 1
    folds = make_folds(len(labels), 5, 0, labels)
    fold_of(folds, len(labels))
    for held in folds:
        counts = Counter(labels[i] for i in held)
        assert counts == {"pos": 9, "neg": 3, "mixed": 1}  # exactly the proportions: each class divides by 5
    plain = make_folds(len(labels), 5, 0)  # without strata a fold may miss the small class
    assert any(Counter(labels[i] for i in held)["mixed"] != 1 for held in plain)


def test_folds_that_cannot_be_made_are_refused_naming_the_reason():
    with pytest.raises(ValueError, match=r"--cv_folds 4: class 'rare' has 3 training rows in train\.csv.*--cv_folds 3"):
        make_folds(12, 4, 0, ["common"] * 9 + ["rare"] * 3, source="train.csv")
    with pytest.raises(ValueError, match=r"--group_column 'speaker' of train\.csv has 2 groups"):
        make_folds(12, 3, 0, groups=["a"] * 6 + ["b"] * 6, source="train.csv", group_column="speaker")
    with pytest.raises(ValueError, match="5 training rows, fewer than the folds"):
        make_folds(5, 6, 0)


def test_flag_checks_before_anything_loads(tiny_bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", text_rows())
    out = tmp_path / "out"
    argv = text_argv(tiny_bert_dir, train, out)
    with pytest.raises(ValueError, match=r"--cv_folds must be >= 2"):
        run_text([*argv, "--cv_folds", "1"])
    with pytest.raises(ValueError, match=r"--cv_only does nothing without --cv_folds"):
        run_text([*argv, "--cv_only", "true"])
    with pytest.raises(ValueError, match=r"--group_column does nothing without --cv_folds"):
        run_text([*argv, "--group_column", "speaker"])
    with pytest.raises(ValueError, match=r"--cv_folds with --lr_find"):
        run_text([*argv, "--cv_folds", "3", "--lr_find", "true"])
    with pytest.raises(ValueError, match=r"--cv_folds .* drop --resume_from_checkpoint"):
        run_text([*argv, "--cv_folds", "3", "--resume_from_checkpoint", str(out)])
    with pytest.raises(ValueError, match=r"--cv_folds 11: class 'neg' has 10 training rows"):
        run_text([*argv, "--cv_folds", "11", "--validation_file", str(train)])
    with pytest.raises(ValueError, match=rf"{re.escape(str(train))}: no column 'speker'"):
        run_text([*argv, "--cv_folds", "3", "--group_column", "speker"])
    # an output directory with an interrupted run's checkpoints: cross-validation does not resume
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    with pytest.raises(ValueError, match=r"checkpoints of an unfinished run .* --cv_folds does not resume"):
        run_text([*argv, "--cv_folds", "3"])
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4"]  # nothing written, nothing locked


# -- end to end -------------------------------------------------------------------------------------------------
def test_text_cv_only_reports_mean_and_std_of_the_folds_and_keeps_no_model(tiny_bert_dir, tmp_path):
    rows = text_rows()
    train = write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "out"
    metrics = run_text(text_argv(tiny_bert_dir, train, out, "--validation_file", train, "--id_column", "id",
                                 "--cv_folds", "5", "--cv_only", "true"))

    results = json.loads((out / "cv_results.json").read_text())
    assert results["folds"] == 5 and results["rows"] == 30 and results["seed"] == 3
    assert results["split"] == "StratifiedKFold, stratified by label"
    per_fold = [fold["metrics"] for fold in results["per_fold"]]
    assert [fold["held_out_rows"] for fold in results["per_fold"]] == [6] * 5
    for name in ("accuracy", "macro_f1", "loss", "f1_pos"):
        values = [fold[name] for fold in per_fold]
        assert results["summary"][name]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert results["summary"][name]["std"] == pytest.approx(np.std(values), abs=1e-12)
        assert metrics[f"cv_{name}_mean"] == results["summary"][name]["mean"]
        assert metrics[f"cv_{name}_std"] == results["summary"][name]["std"]
    assert len({fold["loss"] for fold in per_fold}) == 5  # five models, five different held-out losses
    assert "samples" not in results["summary"] and "runtime" not in results["summary"]  # bookkeeping, not metrics
    all_results = json.loads((out / "all_results.json").read_text())
    assert all_results == metrics and not any(key.startswith(("eval_", "train_")) for key in all_results)

    # out-of-fold predictions: every training row once, in order, from the fold that held it out
    oof = read_csv(out / "cv_oof_predictions.csv")
    assert [r["id"] for r in oof] == [r["id"] for r in rows]
    assert [r["label"] for r in oof] == [r["label"] for r in rows]
    assert list(oof[0]) == ["id", "fold", "label", "prediction", "prob_neg", "prob_pos"]
    folds = make_folds(30, 5, 3, [r["label"] for r in rows])  # the folds the run made: seeded, stratified
    assert [int(r["fold"]) for r in oof] == [int(k) + 1 for k in fold_of(folds, 30)]
    assert all(Counter(r["label"] for r in oof if r["fold"] == str(k)) == {"pos": 4, "neg": 2} for k in range(1, 6))
    for k, fold in enumerate(per_fold, start=1):  # each fold's accuracy is that of its out-of-fold rows
        mine = [r for r in oof if r["fold"] == str(k)]
        assert fold["accuracy"] == pytest.approx(np.mean([r["label"] == r["prediction"] for r in mine]))
        assert all(float(r["prob_neg"]) + float(r["prob_pos"]) == pytest.approx(1, abs=1e-5) for r in mine)

    # no final model, no fold model, no checkpoint; a finished, unlocked output directory
    assert not list(out.rglob("*.safetensors")) and not list(out.rglob("checkpoint-*"))
    assert sorted(p.name for p in (out / "cv").iterdir()) == [f"fold-{k}" for k in range(1, 6)]
    assert (out / "cv" / "fold-1" / "trainer_state.json").is_file()
    assert json.loads((out / "cv" / "fold-2" / "eval_results.json").read_text())["eval_samples"] == 6
    assert (out / "config.yaml").is_file() and not (out / LOCK_FILE).exists()
    assert verify_manifest(out) == []


def test_text_cv_then_the_final_model_as_without_cv(tiny_bert_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", text_rows())
    common = ("--eval_strategy", "epoch", "--save_strategy", "epoch", "--load_best_model_at_end", "true",
              "--id_column", "id")
    plain = run_text(text_argv(tiny_bert_dir, train, tmp_path / "plain", *common))
    out = tmp_path / "out"
    metrics = run_text(text_argv(tiny_bert_dir, train, out, *common, "--cv_folds", "3", "--group_column", "speaker"))

    # the final model trained exactly as without cross-validation: same rows, same weights, same results
    for key in ("eval_accuracy", "eval_loss", "train_loss"):
        assert metrics[key] == plain[key], key
    assert metrics["train_samples"] == plain["train_samples"] == 24  # 30 rows, 20% held out for validation
    results = json.loads((out / "cv_results.json").read_text())
    assert results["split"] == "StratifiedGroupKFold, stratified by label, grouped by 'speaker'"
    assert results["rows"] == 24 and sum(fold["held_out_rows"] for fold in results["per_fold"]) == 24
    all_results = json.loads((out / "all_results.json").read_text())
    assert all_results["eval_accuracy"] == metrics["eval_accuracy"]
    assert all_results["cv_accuracy_mean"] == results["summary"]["accuracy"]["mean"] == metrics["cv_accuracy_mean"]

    # grouped: a speaker's rows all in one fold
    speakers = {r["id"]: r["speaker"] for r in text_rows()}
    oof = read_csv(out / "cv_oof_predictions.csv")
    assert len(oof) == 24 and len({r["id"] for r in oof}) == 24
    assert all(len({r["fold"] for r in oof if speakers[r["id"]] == s}) == 1 for s in set(speakers.values()))

    # the final model and its manifest; the folds' best-model checkpoints are gone, the run's own are kept
    assert (out / "model.safetensors").is_file() and verify_manifest(out) == []
    assert not list((out / "cv").rglob("checkpoint-*")) and not list((out / "cv").rglob("*.safetensors"))
    assert list(out.glob("checkpoint-*")) and not (out / LOCK_FILE).exists()
    published = json.loads((out / "MANIFEST.sha256.json").read_text())["published"]
    assert "cv_results.json" in published and "cv_oof_predictions.csv" in published
    assert not any(Path(name).parts[0] == "cv" for name in published)  # the folds' logs stay local


def test_token_cv_grouped_by_document_from_json_lines(tiny_bert_dir, tmp_path):
    words = [("John", "B-PER"), ("Mary", "B-PER"), ("Paris", "B-LOC"), ("Berlin", "B-LOC"), ("Google", "B-ORG")]
    rows = []
    for i in range(24):
        (a, ta), (b, tb) = words[i % 5], words[(i + 2) % 5]
        rows.append({"id": f"s{i}", "tokens": [a, "met", b, "."], "tags": [ta, "O", tb, "O"], "doc": f"d{i // 4}"})
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_bert_dir), "--train_file", str(train), "--output_dir", str(out),
            "--per_device_train_batch_size", "8", "--use_cpu", "true", "--learning_rate", "3e-3",
            "--num_train_epochs", "2", "--save_strategy", "no", "--disable_tqdm", "true", "--seed", "0",
            "--dataloader_pin_memory", "false", "--validation_split_percentage", "20",
            "--cv_folds", "3", "--group_column", "doc", "--cv_only", "true"]
    parse = (ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments)
    metrics = token_cls.main(*parse_args(parse, argv, defaults=token_cls.RECIPE_DEFAULTS))

    results = json.loads((out / "cv_results.json").read_text())
    assert results["split"] == "GroupKFold, not stratified, grouped by 'doc'"
    f1 = [fold["metrics"]["f1"] for fold in results["per_fold"]]
    assert metrics["cv_f1_mean"] == pytest.approx(np.mean(f1)) and metrics["cv_f1_std"] == pytest.approx(np.std(f1))
    oof = read_csv(out / "cv_oof_predictions.csv")
    docs = {r["id"]: r["doc"] for r in rows}
    tags = {r["id"]: " ".join(r["tags"]) for r in rows}
    assert len(oof) == results["rows"] < 24 and len({r["id"] for r in oof}) == len(oof)  # validation held out first
    assert all(r["label"] == tags[r["id"]] and len(r["prediction"].split()) == 4 for r in oof)
    assert all(len({r["fold"] for r in oof if docs[r["id"]] == d}) == 1 for d in {docs[r["id"]] for r in oof})
    assert not list(out.rglob("*.safetensors")) and verify_manifest(out) == []

    conll = tmp_path / "train.conll"  # a CoNLL file has no columns to group by
    conll.write_text("John\tB-PER\nmet\tO\n\nMary\tB-PER\n.\tO\n")
    argv[argv.index(str(train))], argv[argv.index(str(out))] = str(conll), str(tmp_path / "conll-out")
    with pytest.raises(ValueError, match=rf"{re.escape(str(conll))}: a CoNLL file has words and tags only, no column 'doc'"):
        token_cls.main(*parse_args(parse, argv, defaults=token_cls.RECIPE_DEFAULTS))


def test_image_cv_only_evaluates_the_held_out_images_without_augmentation(tiny_vit_dir, tmp_path):
    rows = []
    for i in range(18):
        colour, label = ((220, 40, 40), "red") if i % 3 else ((40, 60, 220), "blue")
        Image.new("RGB", (20, 20), colour).save(tmp_path / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "label": label})
    train = write_csv(tmp_path / "train.csv", rows)
    out = tmp_path / "out"
    argv = ["--model_name_or_path", str(tiny_vit_dir), "--train_file", str(train), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--use_cpu", "true", "--num_train_epochs", "1",
            "--save_strategy", "no", "--disable_tqdm", "true", "--dataloader_pin_memory", "false",
            "--dataloader_num_workers", "0", "--validation_split_percentage", "20", "--augmentation", "strong",
            "--cv_folds", "2", "--cv_only", "true"]
    parse = (ModelArguments, ImageDataArguments, FineTuneArguments, TrainingArguments)
    metrics = image_cls.main(*parse_args(parse, argv, defaults=image_cls.RECIPE_DEFAULTS))
    assert set(metrics) >= {"cv_accuracy_mean", "cv_accuracy_std", "cv_loss_mean"}
    oof = read_csv(out / "cv_oof_predictions.csv")
    assert len(oof) == 14 and all(r["id"].endswith(".png") for r in oof)  # 18 images, 4 for validation
    assert Counter(r["fold"] for r in oof) == {"1": 7, "2": 7}
    probs = {r["id"]: float(r["prob_red"]) for r in oof}
    # identical images of one colour and fold get identical probabilities: no random augmentation at evaluation
    for fold in ("1", "2"):
        for label in ("red", "blue"):
            assert len({round(probs[r["id"]], 6) for r in oof if r["fold"] == fold and r["label"] == label}) == 1
    assert not list(out.rglob("*.safetensors")) and verify_manifest(out) == []


def test_cv_flags_parse_into_the_config(tmp_path):
    argv = ["--model_name_or_path", "m", "--train_file", "t.csv", "--output_dir", str(tmp_path / "o"),
            "--cv_folds", "4", "--group_column", "speaker"]
    _, _, ft_args, _ = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), argv)
    assert (ft_args.cv_folds, ft_args.group_column, ft_args.cv_only) == (4, "speaker", False)
    with pytest.raises((ValueError, ConfigError), match="--cv_folds"):
        parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), [*argv, "--cv_folds", "-2"])
