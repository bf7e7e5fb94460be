"""Safe artifacts: safetensors weights only, ``torch.load`` only with ``weights_only=True``, no remote code
unless asked, a Hub token in no file and no log, an integrity manifest that catches any change (in the
output directory and in a downloaded Hub snapshot), and an unusable output directory caught before training.

About ``training_args.bin``: Trainer pickles its ``TrainingArguments`` there (and into each checkpoint). It
holds arguments, not weights; ftlib never loads it, it is never pushed (``ftlib.outputs.hub.NOT_PUSHED``), and the
token is taken off the arguments before it is written. The test below checks that the pickle references
only argument classes and holds no token; the other pickles Trainer writes for resuming (optimizer,
scheduler, RNG state) must load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import ast
import io
import os
import pickletools
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import text_cls
import torch
from test_resume import sentiment_csv
from transformers import TrainingArguments

from ftlib.outputs import integrity
from ftlib.outputs.hub import files_to_push
from ftlib.run.cli import parse_args
from ftlib.strategy.arguments import FineTuneArguments
from ftlib.tasks.text_classification import TextDataArguments
from ftlib.training.arguments import ModelArguments

ROOT = Path(__file__).resolve().parents[1]
TOKEN_ARG = "hf_" + "FromTheCommandLine" + "x7Q2" * 4
TOKEN_ENV = "hf_" + "FromTheEnvironment" + "k9W4" * 4
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz", ".h5", ".msgpack"}
RESUME_STATE = re.compile(r"optimizer\.pt|scheduler\.pt|rng_state(_\d+)?\.pth")
# what a TrainingArguments pickle may reference: its class, its enums, accelerate's config objects, a device
ARGUMENT_GLOBALS = ("transformers.", "accelerate.", "enum.", "builtins.", "copyreg.", "_codecs.", "collections.",
                    "pathlib.", "torch.device")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return sentiment_csv(tmp_path_factory.mktemp("safety-data") / "train.csv", 20)


def run(model_dir: Path, train: Path, out: Path, *extra) -> dict[str, float]:
    """Two epochs with a checkpoint every 2 steps (so checkpoints are written and kept)."""
    argv = ["--model_name_or_path", model_dir, "--train_file", train, "--output_dir", out, "--use_cpu", "true",
            "--num_train_epochs", "2", "--per_device_train_batch_size", "4", "--save_strategy", "steps",
            "--save_steps", "2", "--logging_steps", "1", "--learning_rate", "1e-3", "--disable_tqdm", "true",
            "--dataloader_pin_memory", "false", *extra]
    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments), list(map(str, argv)),
                      defaults=text_cls.RECIPE_DEFAULTS)
    return text_cls.main(*args)


def pickle_globals(path: Path) -> set[str]:
    """The ``module.name`` globals a ``torch.save`` file's pickle references, read without unpickling."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


def test_artifacts_are_safetensors_and_no_token_anywhere(
    tiny_bert_dir, data, tmp_path, monkeypatch, capfd, caplog, fake_hub
):
    from transformers.trainer_pt_utils import safe_globals

    caplog.set_level("INFO")
    monkeypatch.setenv("HF_TOKEN", TOKEN_ENV)
    plain, lora = tmp_path / "plain", tmp_path / "lora"
    push = ["--push_to_hub", "true", "--log_level", "info"]
    run(tiny_bert_dir, data, plain, *push, "--hub_model_id", "me/plain")  # token from HF_TOKEN
    run(tiny_bert_dir, data, lora, *push, "--hub_model_id", "me/lora", "--lora", "true", "--hub_token", TOKEN_ARG)
    # HfApi(token=None) reads HF_TOKEN itself
    tokens_used = [kw["token"] or os.environ.get("HF_TOKEN") for name, kw in fake_hub if name == "init"]
    # each run's token flowed to the pre-flight check and to the push, so not seeing them below means something
    assert tokens_used == [TOKEN_ENV, TOKEN_ENV, TOKEN_ARG, TOKEN_ARG]

    written = [p for out in (plain, lora) for p in out.rglob("*") if p.is_file()]
    assert len([p for p in written if "checkpoint-" in str(p)]) > 10  # checkpoints are part of what is checked
    # every weight file is safetensors: full models in the plain run, adapters in the LoRA run, checkpoints too
    for out, name in ((plain, "model.safetensors"), (lora, "adapter_model.safetensors")):
        checkpoints = sorted(out.glob("checkpoint-*"))
        assert checkpoints and all((c / name).is_file() for c in [out, *checkpoints])
    # the report's validation predictions are plain arrays: numpy loads them with pickles refused
    reports = [p for p in written if p.name == "predictions.npz"]
    assert reports
    for path in reports:
        with np.load(path, allow_pickle=False) as arrays:
            assert all(arrays[k].dtype != object for k in arrays.files)
    pickles = [p for p in written if p.suffix in PICKLE_SUFFIXES and p not in reports]
    assert {p.name for p in pickles} == {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth"}
    for path in pickles:
        if RESUME_STATE.fullmatch(path.name):
            with safe_globals():  # the numpy types of the RNG state, as Trainer allows them when it resumes
                torch.load(path, weights_only=True)
        else:
            referenced = pickle_globals(path)
            assert "transformers.training_args.TrainingArguments" in referenced
            assert all(g.startswith(ARGUMENT_GLOBALS) for g in referenced), sorted(referenced)

    for path in written:
        content = path.read_bytes()
        for token in (TOKEN_ARG, TOKEN_ENV):
            assert token.encode() not in content, path
    out, err = capfd.readouterr()
    assert "Running training" in out + err + caplog.text  # the logs were captured, at info level
    for token in (TOKEN_ARG, TOKEN_ENV):
        assert token not in out and token not in err and token not in caplog.text
    uploads = [kw["allow_patterns"] for name, kw in fake_hub if name == "upload_folder"]
    assert len(uploads) == 2 and not [f for files in uploads for f in files if Path(f).suffix in PICKLE_SUFFIXES]


def test_torch_load_in_ftlib_passes_weights_only_true():
    """Source level: every ``torch.load(...)`` under ftlib/ and recipes/ passes ``weights_only=True``, and
    nothing unpickles any other way."""
    loads, unsafe = [], []
    for path in sorted([*(ROOT / "ftlib").rglob("*.py"), *(ROOT / "recipes").glob("*.py")]):
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if (owner, node.func.attr) == ("torch", "load"):
                loads.append(where)
                flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    unsafe.append(where)
            elif owner in ("pickle", "dill", "joblib", "cloudpickle") and node.func.attr in ("load", "loads"):
                unsafe.append(where)
        # the AST saw every textual call (no aliasing such as `from torch import load` slipped by)
        assert len(re.findall(r"\btorch\.load\(", source)) == sum(w.startswith(f"{path.relative_to(ROOT)}:") for w in loads)
        assert not re.search(r"from torch import .*\bload\b|import pickle|from pickle import", source), path
    assert not unsafe, unsafe
    print(f"\ntorch.load calls, all with weights_only=True: {loads}")


def test_trust_remote_code_off_by_default_and_passed_through(monkeypatch):
    from ftlib.training import modeling

    model_args, *_ = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
                                ["--model_name_or_path", "some/model", "--train_file", "x.csv"])
    assert model_args.trust_remote_code is False
    seen: list[tuple[str, bool]] = []

    class FakeAuto:
        def __init__(self, kind):
            self.kind = kind

        def from_pretrained(self, path, **kwargs):
            seen.append((self.kind, kwargs["trust_remote_code"]))
            if self.kind != "config":
                return object()
            from transformers import BertConfig

            return BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)

    import transformers

    monkeypatch.setattr(modeling, "AutoConfig", FakeAuto("config"))
    monkeypatch.setattr(transformers, "AutoTokenizer", FakeAuto("tokenizer"))
    monkeypatch.setattr(transformers, "AutoImageProcessor", FakeAuto("image processor"))
    for flag in (False, True):
        args = ModelArguments(model_name_or_path="some/model", trust_remote_code=flag)
        config = modeling.load_config_for_labels(args, 2, {0: "a", 1: "b"}, "single_label_classification")
        modeling.load_model(FakeAuto("model"), args, config)
        modeling.load_tokenizer(args)
        modeling.load_image_processor(args)
    kinds = ["config", "model", "tokenizer", "image processor"]
    assert seen == [(k, False) for k in kinds] + [(k, True) for k in kinds]
    # and nothing turns it on behind the user's back
    for path in [*(ROOT / "ftlib").rglob("*.py"), *(ROOT / "recipes").glob("*.py")]:
        assert not re.search(r"trust_remote_code\s*=\s*True", path.read_text()), path


def test_manifest_verifies_the_output_and_a_hub_snapshot(tiny_bert_dir, data, tmp_path, capsys):
    out = tmp_path / "out"
    run(tiny_bert_dir, data, out)
    manifest = (out / integrity.MANIFEST).read_text()
    snapshot = tmp_path / "snapshot"  # what a download of the pushed repo holds
    for rel in files_to_push(out):
        (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / rel, snapshot / rel)
    (snapshot / ".gitattributes").write_text("*.safetensors filter=lfs\n")  # the Hub adds it; not ours
    assert (snapshot / integrity.MANIFEST).is_file() and not (snapshot / "training_args.bin").exists()
    assert "training_args.bin" in manifest and "checkpoint-" not in manifest

    assert integrity.main([str(out)]) == 0
    assert integrity.main(["--snapshot", str(snapshot)]) == 0
    capsys.readouterr()
    assert integrity.main([str(snapshot)]) == 1  # the full check misses the local-only files, and says why
    report = capsys.readouterr().out
    assert "missing: training_args.bin" in report and "missing: trainer_state.json" in report and "--snapshot" in report

    def tampered(folder: Path, how: str) -> Path:
        copy = tmp_path / f"{folder.name}-{how}"
        shutil.copytree(folder, copy)
        if how == "changed":
            (copy / "config.json").write_text((copy / "config.json").read_text().replace("BertFor", "RobertaFor"))
        elif how == "missing":
            (copy / "tokenizer.json").unlink()
        else:
            (copy / "extra.safetensors").write_bytes(b"?")
        return copy

    expected = {"changed": "changed: config.json", "missing": "missing: tokenizer.json", "extra": "extra: extra.safetensors"}
    for folder, flags in ((out, []), (snapshot, ["--snapshot"])):
        for how, line in expected.items():
            capsys.readouterr()
            assert integrity.main([*flags, str(tampered(folder, how))]) == 1, (folder.name, how)
            assert capsys.readouterr().out.splitlines()[0] == line
    # checkpoints and Trainer's state are not part of the result: rewriting them does not fail the check
    (out / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert integrity.main([str(out)]) == 0


def recipe_argv(model_dir: Path, train: Path, out: Path) -> list[str]:
    return ["--model_name_or_path", str(model_dir), "--train_file", str(train), "--output_dir", str(out),
            "--use_cpu", "true", "--save_strategy", "steps", "--save_steps", "1", "--max_steps", "2"]


def unwritable_dirs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (output_dir, expected message). chmod does not stop root, so as root a sysfs folder stands in."""
    (tmp_path / "a-file").write_text("not a folder")
    cases = {"under a file": (tmp_path / "a-file" / "out", r"cannot be created: .*a-file is a file")}
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        cases["read-only folder"] = (locked, r"locked is not writable: Permission denied")
    elif Path("/sys/kernel").is_dir():
        cases["sysfs folder (root ignores chmod)"] = (Path("/sys/kernel"), r"/sys/kernel is not writable")
    return cases


def test_unwritable_output_dir_is_detected_before_training(tiny_bert_dir, data, tmp_path):
    cases = unwritable_dirs(tmp_path)
    assert len(cases) == 2  # one per kind of user; a machine with neither chmod nor sysfs would skip one
    for name, (out, message) in cases.items():
        args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
                          recipe_argv(tiny_bert_dir, data, out), defaults=text_cls.RECIPE_DEFAULTS)
        with pytest.raises(ValueError, match=message):
            text_cls.main(*args)
        assert not out.exists() or not list(out.glob("checkpoint-*")), name


def test_full_disk_is_detected_before_training(tiny_bert_dir, data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = shutil.disk_usage

    def disk_usage(path):  # 5 MiB free where the output goes; elsewhere (the datasets cache) the real figure
        usage = real(path)
        return usage._replace(free=5 * 2**20) if Path(path).resolve().is_relative_to(out) else usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    args = parse_args((ModelArguments, TextDataArguments, FineTuneArguments, TrainingArguments),
                      [*recipe_argv(tiny_bert_dir, data, out), "--freeze_embeddings", "false"],
                      defaults=text_cls.RECIPE_DEFAULTS)
    # 1M parameters, all trainable: ~4 MiB of weights, ~12 MiB per checkpoint with Adam's moments, 2 kept
    with pytest.raises(ValueError, match=r"out: 5 MiB free, the run needs about 27 MiB for its checkpoints and model"):
        text_cls.main(*args)
    assert sorted(p.name for p in out.iterdir()) == []  # no checkpoint, no model, nothing
