"""COCO person segmentation benchmark: the segmentation recipe's default strategy on a pretrained DINOv2-small backbone
against one learning rate for everything, and against the same model with a randomly initialised backbone.

    python bench/semantic_seg_coco.py                         # three setups, seeds 42 43 44, 40 steps each
    python bench/semantic_seg_coco.py --only strategy --seeds 42 --steps 20
    python bench/semantic_seg_coco.py --all_classes           # the 133 panoptic categories instead of person
    python bench/semantic_seg_coco.py --set augmentation=standard --set learning_rate=2e-4

Data: ../shared/data/coco/val2017-panoptic100 (100 COCO val2017 photos, panoptic semantic masks, 0 = void), its
own 80 / 20 split (train.json / validation.json, as the detection benchmark); person against background (--classes person) unless --all_classes. Model: UperNet (decode
head 256 channels) built on dinov2-small, 224x224 inputs, batch 8, --steps optimizer steps (40: 4 epochs). Runs,
through ``recipes/semantic_seg.py``'s ``main``:
  (a) strategy: the recipe's defaults (backbone at 1e-4 with layer decay 0.8 below its top block, the fresh head
                at 1e-3, warm-up 10%);
  (b) plain:    one learning rate (1e-4) for the backbone and the head, layer decay 1, nothing frozen;
  (c) random:   the defaults on a randomly initialised backbone (--backbone_init random): what pretraining gives.
Prints each run's validation mean IoU and person IoU (20 images), mean +- standard deviation per setup, training and
evaluation images/s, and the input pipeline alone (decode + augmentation in the DataLoader workers) for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch
from transformers import TrainingArguments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
COCO = ROOT.parent / "shared" / "data" / "coco" / "val2017-panoptic100"

from semantic_seg import RECIPE_DEFAULTS, main

from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.semantic_segmentation import SegmentationDataArguments
from ftlib.training.arguments import VisionModelArguments

COMMON = [
    "--backbone", "dinov2-small",
    "--class_names", str(COCO / "semantic_categories.json"), "--void_id", "0",
    "--image_size", "224", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
    "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "5", "--overwrite_output_dir", "true",
    "--disable_tqdm", "true",
]
RUNS = {
    "strategy": [],
    "plain": ["--learning_rate", "1e-4", "--head_learning_rate", "1e-4", "--layer_decay", "1.0"],
    "random": ["--backbone_init", "random"],
}


def split_files(out: Path) -> list[str]:
    """The set's own 80 / 20 split (train.json / validation.json: the photos the detection benchmark uses too) as csv
    files of image and mask paths, so that every seed is scored on the same 20 validation photos."""
    import csv
    import json

    flags = []
    for split in ("train", "validation"):
        names = [image["file_name"] for image in json.loads((COCO / f"{split}.json").read_text())["images"]]
        path = out / f"{split}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "mask"])
            writer.writerows([COCO / "images" / n, COCO / "semantic_masks" / f"{Path(n).stem}.png"] for n in names)
        flags += [f"--{split}_file", str(path)]
    return flags


def recipe_args(name: str, extra: list[str], seed: int, steps: int, out: Path, all_classes: bool) -> tuple:
    classes = [] if all_classes else ["--classes", "person"]
    argv = [*COMMON, *split_files(out), *classes, *RUNS[name], *extra, "--seed", str(seed), "--max_steps", str(steps),
            "--output_dir", str(out / f"{name}-{seed}")]
    return parse_args((VisionModelArguments, SegmentationDataArguments, FineTuneArguments, TrainingArguments), argv,
                      defaults=RECIPE_DEFAULTS)


def pipeline_throughput(args: tuple, epochs: int = 1) -> float:
    """Images/s of decode + the training augmentation through a DataLoader with the recipe's worker count, consuming
    nothing: what the input pipeline can supply."""
    from ftlib.tasks.semantic_segmentation_data import (
        SegTransform,
        build_label_map,
        build_seg_transforms,
        load_segmentation_data,
        read_class_names,
        seg_collate,
        segmentation_processor,
    )

    _, data_args, _, training_args = args
    raw = load_segmentation_data(data_args, training_args.seed)["train"]
    labels = build_label_map(read_class_names(data_args.class_names), data_args.classes, data_args.ignore_index,
                             data_args.void_id)
    processor = segmentation_processor(None, data_args.image_size, 14)
    transform = build_seg_transforms(processor, data_args.augmentation, True, data_args.ignore_index)
    rows = raw.with_transform(SegTransform(transform, data_args.image_column, data_args.mask_column, labels))
    loader = torch.utils.data.DataLoader(rows, batch_size=8, shuffle=True, collate_fn=seg_collate,
                                         num_workers=training_args.dataloader_num_workers)
    seen, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            seen += len(batch["pixel_values"])
    return seen / (time.perf_counter() - start)


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--only", choices=list(RUNS), nargs="+", default=list(RUNS))
    parser.add_argument("--all_classes", action="store_true", help="the 133 panoptic categories instead of person")
    parser.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                        help="extra recipe flag for every run, e.g. --set learning_rate=2e-4")
    parser.add_argument("--output_dir", default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--skip_pipeline", action="store_true", help="do not measure the input pipeline")
    args = parser.parse_args()
    if not COCO.is_dir():
        sys.exit(f"{COCO} not found: this benchmark needs ../shared/data/coco/val2017-panoptic100")
    extra = [token for item in args.set for token in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_semantic_seg_"))
    out.mkdir(parents=True, exist_ok=True)
    headline = "eval_mean_iou" if args.all_classes else "eval_iou_person"
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads "
          f"{torch.get_num_threads()}; DataLoader workers {RECIPE_DEFAULTS['dataloader_num_workers']}", flush=True)

    results: dict[str, list[dict]] = {name: [] for name in args.only}
    for seed in args.seeds:
        for name in args.only:
            start = time.perf_counter()
            metrics = main(*recipe_args(name, extra, seed, args.steps, out, args.all_classes))
            metrics["wall_s"] = time.perf_counter() - start
            results[name].append(metrics)
            print(f"[{name} seed {seed}] mean IoU {metrics['eval_mean_iou']:.4f}, {headline.removeprefix('eval_')} "
                  f"{metrics[headline]:.4f}, train {metrics['train_runtime']:.0f}s "
                  f"({metrics['train_samples_per_second']:.1f} img/s), eval {metrics['eval_samples_per_second']:.1f} "
                  f"img/s, wall {metrics['wall_s']:.0f}s, load {os.getloadavg()[0]:.1f}", flush=True)

    def spread(values: list[float]) -> str:
        deviation = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.4f} ± {deviation:.4f}"

    print(f"\n{'setup':<10} {'mean IoU':<18} {headline.removeprefix('eval_'):<18} {'train img/s':>12} {'eval img/s':>11}")
    for name, runs in results.items():
        print(f"{name:<10} {spread([r['eval_mean_iou'] for r in runs]):<18} {spread([r[headline] for r in runs]):<18} "
              f"{statistics.mean(r['train_samples_per_second'] for r in runs):>12.1f} "
              f"{statistics.mean(r['eval_samples_per_second'] for r in runs):>11.1f}")
    if not args.skip_pipeline:
        supply = pipeline_throughput(recipe_args(args.only[0], extra, args.seeds[0], args.steps, out, args.all_classes))
        consumed = statistics.mean(r["train_samples_per_second"] for runs in results.values() for r in runs)
        print(f"\ninput pipeline alone (decode + augmentation, 224): {supply:.0f} img/s; training consumes "
              f"{consumed:.1f} img/s -> {supply / consumed:.0f}x headroom")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main_bench()
