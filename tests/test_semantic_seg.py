"""Semantic segmentation (recipes/semantic_seg.py, ftlib.tasks.semantic_segmentation*): data sources and the class
map, bad pairs named before training, image / mask alignment through the augmentation, metrics against an independent
computation, the recipe end to end on a tiny UperNet (report overlays, pipeline, ftlib-predict), LoRA save / reload."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COCO = SHARED / "data" / "coco" / "val2017-panoptic100"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_step_budget(monkeypatch):
    import semantic_seg

    monkeypatch.setitem(semantic_seg.RECIPE_DEFAULTS, "min_train_steps", 0)
    monkeypatch.setitem(semantic_seg.RECIPE_DEFAULTS, "dataloader_num_workers", 0)


@pytest.fixture(scope="session")
def tiny_upernet_dir(tmp_path_factory) -> Path:
    """UperNet (decode head 16 channels) on a 4-layer, hidden-32 DINOv2 with patch 8, 32 px inputs, random weights."""
    from transformers import Dinov2Config, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    path = tmp_path_factory.mktemp("tiny-upernet")
    torch.manual_seed(0)
    backbone = Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                            intermediate_size=37, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=True)
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, use_auxiliary_head=False, num_labels=2,
                           auxiliary_in_channels=16)
    UperNetForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessor(size={"height": 32, "width": 32}, do_reduce_labels=False).save_pretrained(path)
    return path


def square_pair(size=(48, 40), box=(10, 8, 30, 28), value=1, background=0, seed=0):
    """An image with a bright square on a dark noisy ground, and its mask (``value`` in the square)."""
    w, h = size
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 40, size=(h, w, 3), dtype=np.uint8)
    mask = np.full((h, w), background, dtype=np.uint8)
    x0, y0, x1, y1 = box
    pixels[y0:y1, x0:x1] = 220
    mask[y0:y1, x0:x1] = value
    return Image.fromarray(pixels), Image.fromarray(mask, "L")


def write_folder(root: Path, n: int, seed: int = 0, value: int = 1, background: int = 0) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        x0, y0 = (int(v) for v in rng.integers(0, 20, size=2))
        image, mask = square_pair(box=(x0, y0, x0 + 18, y0 + 14), value=value, background=background, seed=seed + i)
        image.save(images / f"im{i:02d}.jpg", quality=95)
        mask.save(masks / f"im{i:02d}.png")
    return images, masks


def recipe_args(model_dir: Path, images: Path, masks: Path, out: Path, *extra) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--image_folder", str(images), "--mask_folder", str(masks),
            "--output_dir", str(out), "--use_cpu", "true", "--max_steps", "6", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "4", "--eval_strategy", "no", "--save_strategy", "no",
            "--learning_rate", "1e-3", "--logging_steps", "1", "--seed", "3", "--disable_tqdm", "true",
            "--validation_split_percentage", "25", "--dataloader_pin_memory", "false", *map(str, extra)]


def run_recipe(argv: list[str]) -> dict:
    import semantic_seg

    from ftlib.run.cli import parse_args

    classes = (semantic_seg.VisionModelArguments, semantic_seg.SegmentationDataArguments,
               semantic_seg.FineTuneArguments, semantic_seg.TrainingArguments)
    return semantic_seg.main(*parse_args(classes, argv, defaults=semantic_seg.RECIPE_DEFAULTS))


# -- end to end --------------------------------------------------------------------------------------------------

def test_end_to_end_on_folders_writes_model_report_and_predicts(tiny_upernet_dir, tmp_path):
    images, masks = write_folder(tmp_path / "data", 16)
    out = tmp_path / "out"
    metrics = run_recipe(recipe_args(tiny_upernet_dir, images, masks, out, "--max_steps", "12"))
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 4 and results["train_samples"] == 12
    assert 0.0 <= results["eval_mean_iou"] <= 1.0 and 0.0 <= results["eval_pixel_accuracy"] <= 1.0
    assert {"eval_iou_class_0", "eval_iou_class_1"} <= set(results)
    assert metrics["eval_mean_iou"] == results["eval_mean_iou"]
    # the background is three quarters of every image: even a weak model gets most of it right
    assert results["eval_iou_class_0"] > 0.5
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "class_0", "1": "class_1"} and config["loss_ignore_index"] == 255
    worst = sorted((out / "report" / "worst_images").glob("worst_*.png"))
    assert len(worst) == 4 and Image.open(worst[0]).size == (3 * 48, 40)
    card = (out / "README.md").read_text()
    assert "image-segmentation" in card and "worst_images/worst_01" in card
    strategy = json.loads((out / "ftlib_strategy.json").read_text())
    assert strategy["metric_for_best_model"] == "mean_iou"

    # transformers' pipeline post-processes the saved model: a mask per class present, the input's size
    from transformers import pipeline

    segments = pipeline("image-segmentation", model=str(out))(Image.open(images / "im00.jpg"))
    assert segments and all(s["mask"].size == (48, 40) for s in segments)
    assert {s["label"] for s in segments} <= {"class_0", "class_1"}

    # ftlib-predict: a class-id PNG per image, the image's size, and an index
    from ftlib.outputs.predict import main as predict_main

    new = tmp_path / "new"
    new.mkdir()
    for name in ("im00.jpg", "im01.jpg"):
        Image.open(images / name).resize((60, 50)).save(new / name)
    index = tmp_path / "preds" / "index.csv"
    assert predict_main(["--model", str(out), "--input", str(new), "--output", str(index), "--disable_tqdm",
                         "--num_workers", "0"]) == 0
    import csv

    rows = list(csv.DictReader(index.open()))
    assert [r["id"] for r in rows] == ["im00.jpg", "im01.jpg"]
    written = Image.open(tmp_path / "preds" / rows[0]["mask"])
    assert written.size == (60, 50) and written.mode == "L"
    assert set(np.unique(np.asarray(written))) <= {0, 1}
    shares = float(rows[0]["share_class_0"]) + float(rows[0]["share_class_1"])
    assert shares == pytest.approx(1.0, abs=1e-5)
