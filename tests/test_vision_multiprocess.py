"""The detection and segmentation recipes' evaluation on two processes (accelerate launch, gloo on CPU) equals one
process's: each process scores its own share of the validation images, and the figures must count every image once
(not once per process, not the copies that even out the processes' last batches). The model is fixed: a tiny model
trained a few steps, then both runs start from it with a learning rate of 1e-12 (a step that moves nothing; batch-norm
statistics held with momentum 0)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from detection_helpers import coco_split, tiny_detector
from test_multiprocess import free_port
from test_semantic_seg import tiny_upernet_dir, write_folder  # noqa: F401 - a fixture

pytestmark = pytest.mark.slow


def launch(processes: int, argv: list, recipe: str = "object_detection") -> None:
    launcher = [sys.executable] if processes == 1 else [
        Path(sys.executable).with_name("accelerate"), "launch", "--multi_gpu", "--num_processes", processes,
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port()]
    run = subprocess.run([str(a) for a in [*launcher, f"recipes/{recipe}.py", *argv]], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_two_processes_evaluate_detection_as_one(tmp_path):
    root = tmp_path / "coco"
    coco_split(root, "train", 8, seed=0)
    coco_split(root, "validation", 7, seed=1)  # odd: the second process's last batch is padded
    common = ["--train_file", root / "train.json", "--validation_file", root / "validation.json", "--image_size", 64,
              "--max_image_size", 96, "--per_device_train_batch_size", 2, "--per_device_eval_batch_size", 2,
              "--use_cpu", "true", "--dataloader_num_workers", 0, "--dataloader_pin_memory", "false", "--seed", 3,
              "--min_train_steps", 0, "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
              "--augmentation", "none"]
    trained = tmp_path / "trained"
    launch(1, [*common, "--model_name_or_path", tiny_detector(tmp_path / "tiny"), "--output_dir", trained,
               "--max_steps", 300, "--learning_rate", "1e-3", "--head_learning_rate", "1e-3"])
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"eval-{processes}"
        launch(processes, [*common, "--model_name_or_path", trained, "--output_dir", out, "--max_steps", 1,
                           "--learning_rate", 1e-12, "--head_learning_rate", 1e-12, "--weight_decay", 0])
        results[processes] = json.loads((out / "all_results.json").read_text())
    keys = [k for k in results[1] if k.startswith("eval_") and ("map" in k or "mar" in k)]
    assert keys and any(results[1][k] > 0 for k in keys), results[1]  # a figure that can differ
    for key in keys:
        assert results[2][key] == pytest.approx(results[1][key], abs=1e-6), (key, results[1][key], results[2][key])


def test_two_processes_evaluate_segmentation_as_one(tmp_path, tiny_upernet_dir):  # noqa: F811
    images, masks = write_folder(tmp_path / "data", 14)
    common = ["--image_folder", images, "--mask_folder", masks, "--validation_split_percentage", 25,
              "--per_device_train_batch_size", 2, "--per_device_eval_batch_size", 2, "--use_cpu", "true",
              "--dataloader_num_workers", 0, "--dataloader_pin_memory", "false", "--seed", 3, "--min_train_steps", 0,
              "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--augmentation", "none"]
    trained = tmp_path / "trained"
    launch(1, [*common, "--model_name_or_path", tiny_upernet_dir, "--output_dir", trained, "--max_steps", 20,
               "--learning_rate", "1e-3"], "semantic_seg")
    results = {}
    for processes in (1, 2):
        out = tmp_path / f"eval-{processes}"
        launch(processes, [*common, "--model_name_or_path", trained, "--output_dir", out, "--max_steps", 1,
                           "--learning_rate", 1e-12, "--head_learning_rate", 1e-12, "--weight_decay", 0,
                           "--batch_norm_momentum", 0], "semantic_seg")
        results[processes] = json.loads((out / "all_results.json").read_text())
    keys = [k for k in results[1] if k.startswith("eval_") and ("iou" in k or "accuracy" in k)]
    assert keys and 0 < results[1]["eval_mean_iou"] < 1, results[1]
    for key in keys:
        assert results[2][key] == pytest.approx(results[1][key], abs=1e-6), (key, results[1][key], results[2][key])
