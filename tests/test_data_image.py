"""ftlib.data.image: loading, decoding, scanning, transforms, MixUp/CutMix, worker count (offline).

Labels (names, validation split, encoding) are ftlib.data.labels' for every source: tested here on image sources."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as ImageFeature
from PIL import Image, ImageFile
from transformers import (
    BitImageProcessor,
    ConvNextImageProcessor,
    EfficientNetImageProcessor,
    ViTImageProcessor,
)

from ftlib.core import system
from ftlib.data.image import (
    CorruptImageError,
    ImageTransform,
    MixupCutmix,
    build_transforms,
    default_num_workers,
    image_collate,
    image_ids,
    load_image_data,
    load_image_folder,
    open_image,
    resize_processor,
    scan_images,
    undecoded,
)
from ftlib.data.labels import MULTI, ensure_validation, infer_labels, prepare_splits
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.training.trainer import FtTrainer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HYMENOPTERA = SHARED / "data" / "hymenoptera"


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """One file per decoding case, with known pixel values."""
    out = {}
    out["rgb"] = tmp_path / "rgb.jpg"
    _noise().save(out["rgb"], quality=95)
    out["gray"] = tmp_path / "gray.png"
    Image.new("L", (20, 10), 100).save(out["gray"])
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 red (transparent), 1 green
    pal.paste(1, (10, 0, 20, 10))
    out["palette"] = tmp_path / "palette.png"
    pal.save(out["palette"], transparency=0)
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.paste((0, 0, 255, 255), (10, 0, 20, 10))  # opaque blue
    out["rgba"] = tmp_path / "rgba.png"
    rgba.save(out["rgba"])
    out["cmyk"] = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (20, 10), (255, 0, 0, 0)).save(out["cmyk"], quality=100)  # pure cyan
    out["gray16"] = tmp_path / "gray16.png"
    Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16)).save(out["gray16"])
    buf = io.BytesIO()
    _noise(64, 64).save(buf, format="JPEG", quality=95)
    out["truncated"] = tmp_path / "truncated.jpg"
    out["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["not_image"] = tmp_path / "notes.jpg"
    out["not_image"].write_text("this is not a JPEG")
    return out


# ---------------------------------------------------------------------------------------------------
# open_image / scan_images
# ---------------------------------------------------------------------------------------------------

def test_open_image_converts_every_mode_to_rgb(images):
    assert Image.open(images["palette"]).mode == "P" and Image.open(images["cmyk"]).mode == "CMYK"
    gray = open_image(images["gray"])
    assert gray.mode == "RGB" and gray.size == (20, 10) and gray.getpixel((0, 0)) == (100, 100, 100)
    pal = open_image(images["palette"])
    assert pal.mode == "RGB"
    assert pal.getpixel((0, 0)) == (255, 255, 255)  # transparent index composited on white
    assert pal.getpixel((15, 5)) == (0, 255, 0)
    rgba = open_image(images["rgba"])
    assert rgba.getpixel((0, 0)) == (255, 255, 255) and rgba.getpixel((15, 5)) == (0, 0, 255)
    cyan = np.asarray(open_image(images["cmyk"]), dtype=int)
    assert cyan.shape == (10, 20, 3) and np.abs(cyan - [0, 255, 255]).max() <= 3
    assert open_image(images["gray16"]).getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    rgb = np.asarray(open_image(images["rgb"]))
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    # datasets' undecoded Image dicts: bytes take priority, path alone also works
    as_dict = open_image({"bytes": images["gray"].read_bytes(), "path": "x.png"})
    assert as_dict.getpixel((3, 3)) == (100, 100, 100)
    assert open_image({"bytes": None, "path": str(images["gray"])}).mode == "RGB"


@pytest.mark.parametrize("case", ["truncated", "not_image"])
def test_open_image_names_corrupt_file(images, case):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(CorruptImageError, match="notes.jpg|truncated.jpg") as err:
        open_image(images[case])
    assert isinstance(err.value, ValueError) and err.value.path == str(images[case])
    # the truncated file does open (header is fine): the error must come from the decode
    if case == "truncated":
        Image.open(images[case])


def test_scan_images_raises_on_first_bad_then_skips(images):
    order = ["rgb", "gray", "not_image", "palette", "truncated", "rgba", "cmyk"]
    ds = Dataset.from_dict({"image_path": [str(images[k]) for k in order], "label": list("abcdefg")})
    with pytest.raises(CorruptImageError) as err:
        scan_images(ds, "image_path", skip_corrupt=False, num_threads=2)
    assert err.value.path == str(images["not_image"])  # first in dataset order, not first to finish

    kept, skipped = scan_images(ds, "image_path", skip_corrupt=True, num_threads=2, chunk_size=3)
    assert skipped == [str(images["not_image"]), str(images["truncated"])]
    assert kept["label"] == ["a", "b", "d", "f", "g"]

    dsd, skipped = scan_images(DatasetDict(train=ds, validation=ds.select([0, 4])), "image_path",
                               skip_corrupt=True)
    assert (len(dsd["train"]), len(dsd["validation"]), len(skipped)) == (5, 1, 3)
    clean, none = scan_images(kept, "image_path")
    assert none == [] and len(clean) == 5


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------

def _write_class_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> None:
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(root / cls / f"{i:03d}{ext}")


def test_flat_folder_lists_sorted_and_the_shared_split_is_stratified(tmp_path):
    _write_class_folder(tmp_path / "data", {"cat": 40, "dog": 20})
    (tmp_path / "data" / "cat" / "readme.txt").write_text("ignored: not an image")
    dsd = load_image_folder(tmp_path / "data")
    assert list(dsd) == ["train"] and dsd["train"].column_names == ["image", "label"]
    assert len(dsd["train"]) == 60 and dsd["train"]["image"] == sorted(dsd["train"]["image"])
    split = ensure_validation(dsd, "label", 25.0, seed=0)
    val = list(split["validation"]["label"])
    assert (val.count("cat"), val.count("dog")) == (10, 5)  # the 2:1 ratio is kept
    assert len(split["train"]) == 45
    again = ensure_validation(load_image_folder(tmp_path / "data"), "label", 25.0, seed=0)
    assert list(again["validation"]["image"]) == list(split["validation"]["image"])
    other = ensure_validation(load_image_folder(tmp_path / "data"), "label", 25.0, seed=1)
    assert list(other["validation"]["image"]) != list(split["validation"]["image"])
    assert infer_labels(split["train"], "label", "data").names == ["cat", "dog"]


def test_split_folder_layout_and_errors(tmp_path):
    root = tmp_path / "ds"
    _write_class_folder(root / "train", {"ants": 3, "bees": 2}, ".jpg")
    _write_class_folder(root / "val", {"ants": 2, "bees": 1}, ".jpg")
    args = ImageDataArguments(image_folder=str(root))
    dsd, labels = prepare_splits(load_image_data(args), args, [args.image_column], seed=0)
    assert {k: len(v) for k, v in dsd.items()} == {"train": 5, "validation": 3}
    assert labels.names == ["ants", "bees"] and list(dsd["validation"]["labels"]) == [0, 0, 1]

    _write_class_folder(root / "test", {"wasps": 1}, ".jpg")
    with pytest.raises(ValueError, match=r"ds \(test\): label 'wasps' .*does not occur in the training"):
        prepare_splits(load_image_data(args), args, [args.image_column], seed=0)

    (tmp_path / "empty" / "train" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match=str(tmp_path / "empty" / "train")):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")


def test_csv_relative_paths_and_missing_column(tmp_path):
    _write_class_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    rows = [f"imgs/{c}/{i:03d}.png,{c}" for c in "ab" for i in range(4)]
    (tmp_path / "train.csv").write_text("file,cls\n" + "\n".join(rows) + "\n")
    (tmp_path / "val.csv").write_text("file,cls\nimgs/a/000.png,a\n" + str(tmp_path / "imgs/b/001.png") + ",b\n")
    args = ImageDataArguments(train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val.csv"),
                              image_column="file", label_column="cls")
    dsd, _ = prepare_splits(load_image_data(args), args, [args.image_column], seed=0)
    assert dsd["train"]["file"][0] == str(tmp_path / "imgs" / "a" / "000.png")  # relative to the csv
    assert all(Path(p).is_file() for p in [*dsd["train"]["file"], *dsd["validation"]["file"]])
    assert list(dsd["validation"]["labels"]) == [0, 1]

    no_label = ImageDataArguments(train_file=str(tmp_path / "train.csv"), image_column="file")
    with pytest.raises(ValueError, match=r"train.csv: no column 'label'; the columns are file, cls"):
        prepare_splits(load_image_data(no_label), no_label, [no_label.image_column], seed=0)
    (tmp_path / "bad_val.csv").write_text("file,cls\nimgs/a/000.png,zebra\n")
    bad = ImageDataArguments(train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "bad_val.csv"),
                             image_column="file", label_column="cls")
    with pytest.raises(ValueError, match=r"bad_val.csv: label 'zebra' "):
        prepare_splits(load_image_data(bad), bad, [bad.image_column], seed=0)


def test_multi_label_csv_and_jsonl_give_multi_hot(tmp_path):
    _write_class_folder(tmp_path, {"x": 3})
    (tmp_path / "train.csv").write_text("image,label\nx/000.png,sky;tree\nx/001.png, tree \nx/002.png,\n")
    (tmp_path / "val.csv").write_text("image,label\nx/000.png,tree;sky\n")
    args = ImageDataArguments(train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "val.csv"),
                              label_separator=";")
    dsd, labels = prepare_splits(load_image_data(args), args, [args.image_column], 0, args.problem_type,
                                 args.label_separator)
    assert labels.problem_type == MULTI and labels.names == ["sky", "tree"]
    assert list(dsd["train"]["labels"]) == [[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]  # an empty cell: no label
    proc = ViTImageProcessor(size={"height": 16, "width": 16})
    train = dsd["train"].with_transform(ImageTransform(build_transforms(proc, train=False), "image"))
    batch = image_collate([train[i] for i in range(3)])
    assert torch.equal(batch["labels"], torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]]))
    assert batch["pixel_values"].shape == (3, 3, 16, 16)

    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"image": f"x/00{i}.png", "label": names}) + "\n"
        for i, names in enumerate([["tree", "sky"], ["sky"], [], ["tree"]])))
    lists = ImageDataArguments(train_file=str(tmp_path / "train.jsonl"), multi_label=True)
    dsd, labels = prepare_splits(load_image_data(lists), lists, ["image"], 0, lists.problem_type)
    assert labels.names == ["sky", "tree"]
    assert sorted(tuple(v) for v in [*dsd["train"]["labels"], *dsd["validation"]["labels"]]) == [
        (0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)]


def test_hub_dataset_is_cast_undecoded_and_decodes_in_the_transform(images):
    paths = [str(images[k]) for k in ("rgb", "gray", "palette", "rgba")] * 2
    features = Features({"img": ImageFeature(), "fine": ClassLabel(names=["u", "v"]), "other": Value("int32")})
    train = Dataset.from_dict({"img": paths, "fine": [0, 1] * 4, "other": list(range(8))}, features=features)
    train = undecoded(train, "img")
    assert train.features["img"].decode is False
    assert isinstance(train[2]["img"], dict)  # bytes / path, not a PIL image
    args = ImageDataArguments(dataset_name="hub/name", image_column="img", label_column="fine")
    dsd, labels = prepare_splits(DatasetDict(train=train, validation=train.select([0, 1])), args, ["img"], seed=0)
    assert labels.names == ["u", "v"]
    # the ClassLabel ids are already ours: renamed, not rewritten
    assert dsd["train"].features["labels"] == ClassLabel(names=["u", "v"])
    assert image_ids(dsd["train"], "img")[:2] == paths[:2]
    proc = ViTImageProcessor(size={"height": 8, "width": 8})
    dsd["train"].set_transform(ImageTransform(build_transforms(proc, "light"), "img"))
    batch = image_collate([dsd["train"][i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 8, 8) and batch["labels"].tolist() == [0, 1, 0, 1]

    with pytest.raises(ValueError, match="'other' must hold images"):
        undecoded(train, "other")


def test_image_ids_fall_back_to_the_row_number_for_bytes(images):
    rows = [{"bytes": images["gray"].read_bytes(), "path": None}, {"bytes": None, "path": str(images["rgb"])}]
    ds = Dataset.from_dict({"image": rows}, features=Features({"image": ImageFeature(decode=False)}))
    assert image_ids(ds, "image") == ["0", str(images["rgb"])]


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------

PROCESSORS = {
    "vit": lambda: ViTImageProcessor(size={"height": 32, "width": 32}),
    "convnext": lambda: ConvNextImageProcessor(size={"shortest_edge": 32}),  # crop_pct 0.875
    "efficientnet": lambda: EfficientNetImageProcessor(
        size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32}, do_center_crop=True),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_eval_transform_matches_the_image_processor(name):
    proc = PROCESSORS[name]()
    img = _noise(60, 84)
    tf = build_transforms(proc, "standard", train=False)
    out = tf(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32 and type(out) is torch.Tensor
    reference = proc(img, return_tensors="pt")["pixel_values"][0]  # includes EfficientNet's include_top
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=0)
    assert torch.equal(tf(img), out)  # deterministic
    # the config-dict form gives the same pipeline
    torch.testing.assert_close(build_transforms(proc.to_dict(), "none", train=False)(img), out)


@pytest.mark.parametrize("preset", ["light", "standard", "strong"])
def test_train_transforms_are_random_with_the_right_shape(preset):
    proc = PROCESSORS["convnext"]()
    torch.manual_seed(0)
    tf = build_transforms(proc, preset, train=True)
    img = _noise(60, 84)
    a, b = tf(img), tf(img)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not torch.equal(a, b)
    # preset "none" in training is the eval pipeline
    torch.testing.assert_close(build_transforms(proc, "none", train=True)(img),
                               build_transforms(proc, "strong", train=False)(img))


def test_overrides_and_unknown_names():
    proc = PROCESSORS["vit"]()
    steps = [type(t).__name__ for t in build_transforms(proc, "strong", auto_augment="rand", erasing=0.0,
                                                         crop_scale=(0.5, 1.0)).transforms]
    assert "RandAugment" in steps and "TrivialAugmentWide" not in steps and "RandomErasing" not in steps
    assert "RandomRotation" in build_transforms(proc, "light", rotation=10).__repr__()
    # crop_pct override: shorter side to 32/0.5 = 64, then centre crop -> still 32x32
    assert build_transforms(proc, "none", train=False, crop_pct=0.5)(_noise(60, 84)).shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"'heavy'.*\['none', 'light', 'standard', 'strong'\]"):
        build_transforms(proc, "heavy")
    with pytest.raises(ValueError, match=r"\['hflp'\].*'hflip'"):
        build_transforms(proc, "light", hflp=0.5)
    with pytest.raises(ValueError, match="auto_augment"):
        build_transforms(proc, "strong", auto_augment="autoaug")


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_resize_processor_keeps_the_ratio_and_matches_its_own_output(name):
    proc = PROCESSORS[name]()
    small = resize_processor(proc, 16)
    img = _noise(60, 84)
    out = build_transforms(small, "none", train=False)(img)
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out, small(img, return_tensors="pt")["pixel_values"][0], atol=1e-5, rtol=0)
    assert proc(img, return_tensors="pt")["pixel_values"].shape[-1] == 32  # the original is left alone
    lite = BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    assert resize_processor(lite, 64).size.shortest_edge == 73  # 64 * 256 / 224


# ---------------------------------------------------------------------------------------------------
# MixUp / CutMix and the loss
# ---------------------------------------------------------------------------------------------------

def _batch(n: int = 8, num_classes: int = 4) -> dict[str, torch.Tensor]:
    return image_collate([{"pixel_values": torch.full((3, 8, 8), float(i)), "labels": i % num_classes}
                          for i in range(n)])


@pytest.mark.parametrize("alphas", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_mixup_cutmix_soft_labels_sum_to_one(alphas):
    torch.manual_seed(0)
    mix = MixupCutmix(num_classes=4, mixup_alpha=alphas[0], cutmix_alpha=alphas[1], prob=1.0)
    original = _batch()
    batch = mix(original)
    labels = batch["labels"]
    assert labels.shape == (8, 4) and labels.dtype == torch.float32
    torch.testing.assert_close(labels.sum(1), torch.ones(8))
    assert (labels.max(1).values < 1).any()  # at least one row is really mixed
    assert batch["pixel_values"].shape == (8, 3, 8, 8)
    assert original["labels"].dtype == torch.long  # the input batch is not modified in place


def test_mixup_mixes_multi_hot_targets_and_prob_zero_gives_one_hot():
    torch.manual_seed(0)
    multi_hot = {"pixel_values": torch.rand(4, 3, 8, 8), "labels": torch.tensor([[1.0, 0, 1], [0, 1, 0]] * 2)}
    mixed = MixupCutmix(num_classes=3, mixup_alpha=0.8, cutmix_alpha=0.0)(multi_hot)["labels"]
    assert mixed.shape == (4, 3) and ((mixed > 0) & (mixed < 1)).any() and (mixed <= 1).all()

    batch = MixupCutmix(num_classes=4, prob=0.0)(_batch())
    assert torch.equal(batch["labels"], torch.eye(4).repeat(2, 1))
    assert torch.equal(batch["pixel_values"][3], torch.full((3, 8, 8), 3.0))  # images untouched
    with pytest.raises(ValueError, match="mixup_alpha"):
        MixupCutmix(num_classes=4, mixup_alpha=0.0, cutmix_alpha=0.0)


def test_builtin_model_loss_rejects_soft_labels_and_the_trainer_loss_takes_them():
    from types import SimpleNamespace

    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=8, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=37, num_labels=4, problem_type="single_label_classification")
    model = ViTForImageClassification(cfg).eval()
    torch.manual_seed(0)
    batch = MixupCutmix(num_classes=4)(_batch())
    with pytest.raises((RuntimeError, ValueError)):  # labels.view(-1) is [B*C] vs logits [B, C]
        model(**batch)
    logits = model(pixel_values=batch["pixel_values"]).logits
    expected = -(batch["labels"] * logits.log_softmax(-1)).sum(1).mean()
    trainer = SimpleNamespace(model=model, class_weights=None, token_loss_normalizer=None)  # all compute_loss reads here
    loss = FtTrainer.compute_loss(trainer, model, dict(batch))
    torch.testing.assert_close(loss, expected)


def test_default_num_workers(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cpus, expected in [(1, 0), (2, 1), (6, 5), (64, 8)]:
        monkeypatch.setattr(system, "available_cpus", lambda c=cpus: c)
        assert default_num_workers() == expected
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(system, "available_cpus", lambda: 16)
    assert default_num_workers() == 3


# ---------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------

def test_hymenoptera_lists_scans_and_loads():
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} absent (../shared absent)")
    dsd = load_image_folder(HYMENOPTERA)
    assert {k: len(v) for k, v in dsd.items()} == {"train": 245, "validation": 153}
    assert infer_labels(dsd["train"], "label", "hymenoptera").names == ["ants", "bees"]
    palette = [p for p in dsd["train"]["image"] if Image.open(p).mode == "P"]
    assert len(palette) == 1 and open_image(palette[0]).mode == "RGB"

    start = time.perf_counter()
    scanned, skipped = scan_images(dsd, "image", skip_corrupt=False)
    scan_s = time.perf_counter() - start
    assert skipped == [] and len(scanned["train"]) == 245
    print(f"\nhymenoptera scan: {398 / scan_s:.0f} img/s ({scan_s:.2f}s for 398 images)")


@pytest.mark.slow
def test_hymenoptera_decode_and_augment_throughput():
    """Prints images/s of decode + 'standard' augmentation at 224 through a DataLoader."""
    if not HYMENOPTERA.is_dir():
        pytest.skip(f"{HYMENOPTERA} absent (../shared absent)")
    args = ImageDataArguments(image_folder=str(HYMENOPTERA))
    dsd, _ = prepare_splits(load_image_data(args), args, ["image"], seed=0)
    proc = ViTImageProcessor()  # 224x224, the usual fine-tuning size
    train = dsd["train"].with_transform(ImageTransform(build_transforms(proc, "standard"), "image"))
    workers = default_num_workers()
    loader = torch.utils.data.DataLoader(train, batch_size=32, num_workers=workers, collate_fn=image_collate)
    start = time.perf_counter()
    seen = 0
    for batch in loader:
        assert batch["pixel_values"].shape[1:] == (3, 224, 224)
        seen += len(batch["labels"])
    load_s = time.perf_counter() - start
    assert seen == 245
    print(f"\nhymenoptera decode + standard aug (224): {seen / load_s:.0f} img/s, num_workers={workers}")
