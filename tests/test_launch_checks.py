"""Launch checks (issue 11, part 1): a launch whose processes, engine and strategy disagree with what Trainer
will do stops before it writes anything, and an output directory belongs to one run at a time.

The rules are checked in-process on stand-ins of the launch (environment as ``accelerate launch`` sets it);
the end-to-end tests launch 2 real CPU processes (gloo) as tests/test_multiprocess.py does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT
from test_multiprocess import MAX_STEPS, command, free_port
from test_resume import sentiment_csv
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from ftlib.outputs.hub import files_to_push
from ftlib.outputs.integrity import IGNORED, verify_manifest, write_manifest
from ftlib.run import launch
from ftlib.run.launch import check_launch
from ftlib.run.output_dir import (
    FINISHED_MARKERS,
    LOCK_FILE,
    check_not_in_use,
    lock_output_dir,
    prepare_output_dir,
    release_output_dir,
)
from ftlib.strategy.arguments import FineTuneArguments

FSDP2 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
FSDP1 = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1", "FSDP_USE_ORIG_PARAMS": "false"}
ZERO3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
         "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}
ZERO2 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}
TWO = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}


def distributed_args(**overrides):
    """What TrainingArguments say on a GPU machine where the engine took the processes (DeepSpeed's cannot be
    built here: it needs the package)."""
    return SimpleNamespace(**{"parallel_mode": ParallelMode.DISTRIBUTED, "use_cpu": False, "fsdp": None,
                              "deepspeed": None, **overrides})


# --- the rules, in-process --------------------------------------------------------------------------------


def test_processes_that_trainer_would_not_distribute_are_refused(tmp_path):
    args = TrainingArguments(str(tmp_path / "out"), report_to="none")  # no --use_cpu, no GPU: not distributed
    assert args.parallel_mode == ParallelMode.NOT_PARALLEL
    with pytest.raises(ValueError) as err:
        check_launch(args, FineTuneArguments(), env=TWO)
    message = str(err.value)
    assert message.startswith("2 processes were launched (WORLD_SIZE=2) but Trainer would not distribute them")
    assert "add --use_cpu true to the recipe's flags on a machine without GPUs: accelerate launch --multi_gpu " \
           "--num_processes 2 " in message and message.endswith(" ... --use_cpu true")
    check_launch(args, FineTuneArguments(), env={})  # one process: nothing to refuse
    check_launch(args, FineTuneArguments(), env={"WORLD_SIZE": "1"})


@pytest.mark.parametrize("use_cpu", [False, True])
def test_fsdp_and_deepspeed_without_gpus_are_refused(tmp_path, use_cpu):
    args = TrainingArguments(str(tmp_path / "out"), report_to="none", use_cpu=use_cpu)
    why = "--use_cpu true is set" if use_cpu else "this machine has no GPU"
    with pytest.raises(ValueError, match="^the accelerate config \\(distributed_type: FSDP\\) asks for FSDP, which shards "
                       f"the model over GPUs, but {why}: .* run data-parallel on CPU instead"):
        check_launch(args, FineTuneArguments(), env={**FSDP2, **TWO})
    fsdp_args = TrainingArguments(str(tmp_path / "out"), report_to="none", use_cpu=use_cpu, fsdp=True)
    with pytest.raises(ValueError, match="^--fsdp asks for FSDP"):
        check_launch(fsdp_args, FineTuneArguments(), env={})
    stand_in = SimpleNamespace(parallel_mode=ParallelMode.NOT_PARALLEL, use_cpu=use_cpu, fsdp=None, deepspeed=None)
    with pytest.raises(ValueError, match="DEEPSPEED\\) asks for DeepSpeed"):
        check_launch(stand_in, FineTuneArguments(), env=ZERO3)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(launch, "_accelerator_devices", lambda: 2)


@pytest.fixture
def deepspeed_installed(monkeypatch):
    monkeypatch.setattr(launch, "_deepspeed_installed", lambda: True)


STRATEGY_CASES = [  # (env, strategy, refusal or None)
    (FSDP2, {"gradual_unfreeze": 1}, "^--gradual_unfreeze works with single-device and DDP runs, not FSDP or DeepSpeed"),
    (ZERO2, {"gradual_unfreeze": 1}, "^--gradual_unfreeze works with single-device and DDP runs"),
    (FSDP2, {"head_warmup_steps": 5}, "^--head_warmup_steps works with single-device and DDP runs, not FSDP or DeepSpeed"),
    (ZERO2, {"head_warmup_steps": 0.1}, "^--head_warmup_steps works with single-device and DDP runs"),
    (FSDP2, {"lr_find": True}, "^--lr_find works with single-device and DDP runs, not FSDP or DeepSpeed"),
    (ZERO3, {"compare_head_only": "yes"}, "^--compare_head_only yes works with single-device and DDP runs"),
    (FSDP2, {"compare_head_only": "small"}, None),  # the image recipe's default steps aside there (ftlib.strategy.small_data)
    (FSDP2, {"probe_first": "yes"}, "^--probe_first yes works with single-device and DDP runs, not FSDP or DeepSpeed"),
    (ZERO2, {"probe_first": "small"}, None),  # steps aside there too (FtTrainer.wants_probe_first)
    # sharded weights are gathered for the final save, and the merge is done from them (tests/test_sharded_save.py)
    (FSDP2, {"lora": True, "lora_save": "merged"}, None),
    (ZERO3, {"lora": True, "lora_save": "merged"}, None),
    (ZERO2, {"lora": True, "lora_save": "merged"}, None),
    ({**ZERO3, "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "false"}, {},
     "^DeepSpeed ZeRO-3 \\(the accelerate config .* only with zero3_save_16bit_model: true .* no loadable model"),
    ({k: v for k, v in ZERO3.items() if "16BIT" not in k}, {"lora": True}, "zero3_save_16bit_model: true"),  # default
    (FSDP2, {"lora": True}, None),
    (FSDP2, {"layer_decay": 0.8, "head_learning_rate": 1e-3, "freeze_embeddings": True}, None),  # FSDP2: per-parameter
    (FSDP1, {"layer_decay": 0.8, "head_learning_rate": 1e-3},
     "^FSDP v1 without use_orig_params .* \\(--layer_decay, --head_learning_rate\\): set fsdp_use_orig_params: true"),
    (FSDP1, {"freeze_lower_blocks": 1}, "cannot apply \\(--freeze_lower_blocks\\)"),
    (FSDP1, {}, "cannot apply \\(no weight decay on biases and norms \\(always on\\)\\)"),
    ({**FSDP1, "FSDP_USE_ORIG_PARAMS": "true"}, {"layer_decay": 0.8, "freeze_embeddings": True}, None),
    ({}, {"gradual_unfreeze": 1, "lora": True, "lora_save": "merged", "layer_decay": 0.8}, None),  # DDP: all fine
]


@pytest.mark.parametrize(("env", "strategy", "refusal"), STRATEGY_CASES)
def test_strategies_the_engine_cannot_run_are_refused(two_gpus, deepspeed_installed, env, strategy, refusal):
    ft_args = FineTuneArguments(**strategy)
    if refusal is None:
        check_launch(distributed_args(), ft_args, env={**env, **TWO})
    else:
        with pytest.raises(ValueError, match=refusal):
            check_launch(distributed_args(), ft_args, env={**env, **TWO})


def test_deepspeed_without_its_package_is_refused(two_gpus, tmp_path):
    """A DeepSpeed launch (accelerate config, or --deepspeed) on GPUs without the deepspeed package (not installed
    here): refused naming the fix, before anything loads; --deepspeed is refused while parsing, where
    TrainingArguments would otherwise stop with a version-check traceback."""
    from ftlib.run.cli import ConfigError, parse_args

    assert not launch._deepspeed_installed()
    fix = ("asks for DeepSpeed, but the deepspeed package is not installed: pip install deepspeed (it builds against "
           "the installed torch and CUDA), or launch without DeepSpeed (FSDP: accelerate_configs/fsdp.yaml; DDP: "
           "accelerate_configs/multi_gpu.yaml)")
    for env in (ZERO2, ZERO3):
        with pytest.raises(ValueError) as err:
            check_launch(distributed_args(), FineTuneArguments(), env={**env, **TWO})
        assert str(err.value) == f"the accelerate config (distributed_type: DEEPSPEED) {fix}"
    check_launch(distributed_args(), FineTuneArguments(), env={**FSDP2, **TWO})  # FSDP needs no package
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError) as err:
        parse_args((FineTuneArguments, TrainingArguments), ["--output_dir", str(tmp_path / "out"), "--deepspeed",
                                                            str(config), "--report_to", "none"])
    assert str(err.value) == f"--deepspeed {fix}"
    assert not (tmp_path / "out").exists()
    # and the process stays usable: no half-built DeepSpeed config left as transformers' global one
    from transformers.integrations import is_deepspeed_zero3_enabled

    assert is_deepspeed_zero3_enabled() is False


def test_zero3_gathering_for_the_final_save(two_gpus, deepspeed_installed, tmp_path):
    """ZeRO-3 must gather the weights for the final save: read from the accelerate settings, a DeepSpeed JSON given
    to accelerate (its value wins when set) or to --deepspeed (DeepSpeed's default: off)."""
    def gathers(env, deepspeed=None):
        return launch.describe_launch(distributed_args(deepspeed=deepspeed), env).gathers_16bit

    on, off, auto = ({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": v}}
                     for v in (True, False, "auto"))
    files = {}
    for name, config in (("on", on), ("off", off), ("auto", auto), ("unset", {"zero_optimization": {"stage": 3}})):
        files[name] = tmp_path / f"{name}.json"
        files[name].write_text(json.dumps(config))
    deepspeed = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert gathers(ZERO3) is True and gathers(ZERO2) is None and gathers({**FSDP2, **TWO}) is None
    assert gathers({**deepspeed, "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}) is False  # accelerate's default
    assert gathers({**deepspeed, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(files["on"])}) is True
    assert gathers({**deepspeed, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(files["off"]),
                    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}) is False
    assert gathers({**deepspeed, "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(files["auto"]),
                    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"}) is True
    assert gathers({}, deepspeed=str(files["on"])) is True and gathers({}, deepspeed=off) is False
    assert gathers({}, deepspeed=str(files["unset"])) is False
    with pytest.raises(ValueError, match="^DeepSpeed ZeRO-3 \\(--deepspeed\\) shards the weights"):
        check_launch(distributed_args(deepspeed=str(files["unset"])), FineTuneArguments(), env=TWO)
    check_launch(distributed_args(deepspeed=str(files["on"])), FineTuneArguments(lora=True, lora_save="merged"), env=TWO)
    # the shipped config gathers
    assert "zero3_save_16bit_model: true" in (ROOT / "accelerate_configs" / "deepspeed_zero3.yaml").read_text()


def test_more_engine_processes_than_gpus_are_refused(two_gpus):
    with pytest.raises(ValueError, match=r"^FSDP \(.*\) with 4 processes on this machine, which has 2 GPU\(s\): "
                                         r"launch one process per GPU \(--num_processes 2\)"):
        check_launch(distributed_args(), FineTuneArguments(), env={**FSDP2, "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"})
    check_launch(distributed_args(), FineTuneArguments(), env={**FSDP2, "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"})


# --- the output-directory lock, in-process against a real second process -----------------------------------

HOLDER = """import sys, time
from ftlib.run.output_dir import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def start_holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_lock_names_its_holder_and_dies_with_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = start_holder(out)
    try:
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == holder.pid and info["host"] == os.uname().nodename
        expected = re.escape(f"--output_dir {out} is in use by another run (pid {holder.pid} on host {info['host']}, "
                             f"started {info['started']}); wait until it ends or choose another --output_dir")
        with pytest.raises(ValueError, match=expected):
            check_not_in_use(out)
        before = (out / LOCK_FILE).read_bytes()
        with pytest.raises(ValueError, match=expected):
            lock_output_dir(out)
        assert (out / LOCK_FILE).read_bytes() == before  # the refused side changed nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_FILE).is_file()  # a killed holder leaves its file, but no lock: the directory is free
    check_not_in_use(out)
    lock_output_dir(out)
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock_output_dir(out)  # this process holds it already: nothing happens
    release_output_dir(out)
    assert not (out / LOCK_FILE).exists()
    release_output_dir(out)  # not held: nothing happens


def test_lock_file_is_no_result(tmp_path):
    """Not a finished-model marker, not in the manifest, not pushed; the manifest verifies with or without it."""
    out = tmp_path / "out"
    out.mkdir()
    lock_output_dir(out)
    try:
        assert LOCK_FILE not in FINISHED_MARKERS and LOCK_FILE in IGNORED
        assert prepare_output_dir(out) is None  # a directory holding only the lock is not a finished model
        (out / "model.safetensors").write_bytes(b"weights")
        write_manifest(out, published=files_to_push(out))
        manifest = json.loads((out / "MANIFEST.sha256.json").read_text())
        assert sorted(manifest["files"]) == manifest["published"] == ["model.safetensors"]
        assert verify_manifest(out) == []
    finally:
        release_output_dir(out)
    assert verify_manifest(out) == []
    (out / LOCK_FILE).write_text('{"pid": 1}')  # left by a killed run
    assert verify_manifest(out) == [] and verify_manifest(out, snapshot=True) == []


def test_lock_refuses_a_directory_another_run_wrote_while_this_one_started(tmp_path):
    """prepare_output_dir's verdict (fresh, resume, ...) holds only for what it saw: when another run saves or
    finishes there before this one takes the lock, the lock is refused, naming what changed, and nothing is left."""
    out = tmp_path / "out"
    assert prepare_output_dir(out) is None  # fresh (it creates the directory)
    (out / "checkpoint-2").mkdir()
    (out / "model.safetensors").write_bytes(b"the other run's weights")
    with pytest.raises(ValueError, match=re.escape(
            f"--output_dir {out} changed while this run was starting (checkpoint-2 appeared, model.safetensors "
            "appeared): another run wrote there. Nothing was written")):
        lock_output_dir(out)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "model.safetensors"]  # no lock file left
    check_not_in_use(out)

    (out / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert prepare_output_dir(out, overwrite=True) is None  # judged again: unchanged since, so the lock is taken
    lock_output_dir(out)
    release_output_dir(out)
    lock_output_dir(out)  # no verdict pending (nothing prepared since): taken as before
    release_output_dir(out)


def test_a_run_that_finished_meanwhile_stops_the_next_before_any_tracker_writes(tiny_bert_dir, data, tmp_path,
                                                                               monkeypatch):
    """Two runs started together on one directory: the first finishes while the second is still loading. The
    second stops when training begins (where it takes the lock), before TensorBoard writes its logs there, and the
    finished model stays byte-identical."""
    from test_text_cls import run as run_text_cls

    from ftlib.run import steps as ftrun

    out = tmp_path / "out"
    argv = [str(a) for a in recipe_flags(command(tiny_bert_dir, data, out, 1))[1:]] + ["--report_to", "tensorboard"]
    finished = {}

    def the_other_run_finishes(output_dir, needed):  # called after the model is built, just before training
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"the first run's weights")
        write_manifest(Path(output_dir), published=["model.safetensors"])
        finished.update(snapshot(Path(output_dir)))

    monkeypatch.setattr(ftrun, "check_free_space", the_other_run_finishes)
    with pytest.raises(ValueError, match=r"changed while this run was starting \(MANIFEST.sha256.json appeared, "
                                         r"model.safetensors appeared\): another run wrote there"):
        run_text_cls(argv)
    assert finished and snapshot(out) == finished  # no runs/, no config.yaml, no lock file
    assert not list(out.rglob("events.out.tfevents*"))


# --- real 2-process launches on CPU --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("launch-data")
    return sentiment_csv(folder / "train.csv", 16), sentiment_csv(folder / "val.csv", 8, offset=100)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def recipe_flags(cmd: list) -> list:
    return cmd[cmd.index("recipes/text_cls.py"):]


@pytest.mark.slow
def test_two_processes_without_use_cpu_stop_before_writing(tiny_bert_dir, data, tmp_path, recipe_process):
    """The README's old line for two CPU processes (without --use_cpu true): refused, nothing written."""
    out = tmp_path / "out"
    cmd = command(tiny_bert_dir, data, out, 2)
    at = cmd.index("--use_cpu")
    del cmd[at:at + 2]
    log = recipe_process(cmd, tmp_path / "rec").fails()
    assert log.count("ValueError: 2 processes were launched (WORLD_SIZE=2) but Trainer would not distribute them") == 2
    assert "add --use_cpu true to the recipe's flags on a machine without GPUs: accelerate launch --multi_gpu " \
           "--num_processes 2 recipes/text_cls.py ... --use_cpu true" in log
    assert not out.exists()
    assert "Optimizer" not in log  # no model built


@pytest.mark.slow
def test_fsdp_config_on_cpu_is_refused(tiny_bert_dir, data, tmp_path, recipe_process):
    """The shipped FSDP config, 2 processes on this GPU-less machine: refused before anything is written."""
    out = tmp_path / "out"
    flags = recipe_flags(command(tiny_bert_dir, data, out, 2))
    at = flags.index("--use_cpu")
    del flags[at:at + 2]
    launcher = [Path(sys.executable).with_name("accelerate"), "launch", "--config_file", "accelerate_configs/fsdp.yaml",
                "--num_processes", 2, "--mixed_precision", "no", "--main_process_port", free_port()]
    log = recipe_process([*launcher, *flags], tmp_path / "rec").fails()
    assert log.count("ValueError: the accelerate config (distributed_type: FSDP) asks for FSDP, which shards the model "
                     "over GPUs, but this machine has no GPU") == 2
    assert "accelerate launch --multi_gpu --num_processes 2 recipes/text_cls.py ... --use_cpu true" in log
    assert not out.exists()


@pytest.mark.slow
def test_concurrent_runs_on_one_output_dir(tiny_bert_dir, data, tmp_path, recipe_process):
    """A 2-process run holds its output directory: a second 2-process run there (another seed) refuses naming
    the first's main process and changes nothing; the first finishes normally and releases the directory;
    a later run refuses the finished directory and leaves it byte-identical."""
    out = tmp_path / "out"
    first = recipe_process(command(tiny_bert_dir, data, out, 2), tmp_path / "rec-first", pause="hold:3")
    deadline = time.monotonic() + 300
    while not (first.record_dir / "paused.rank0").is_file():
        assert first.proc.poll() is None and time.monotonic() < deadline, first.log()[-3000:]
        time.sleep(0.1)
    pid = int((first.record_dir / "pid.0").read_text())
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == pid
    held = snapshot(out)
    assert {"config.yaml", "checkpoint-2/trainer_state.json", LOCK_FILE} <= set(held)

    cmd = command(tiny_bert_dir, data, out, 2)
    cmd[cmd.index("--seed") + 1] = "4"
    log = recipe_process(cmd, tmp_path / "rec-second").fails()
    assert log.count(f"ValueError: --output_dir {out} is in use by another run (pid {pid} on host ") == 2  # both ranks
    assert "Optimizer" not in log
    assert snapshot(out) == held

    (first.record_dir / "release").touch()
    first.wait()
    assert verify_manifest(out) == []
    assert "seed: 3\n" in (out / "config.yaml").read_text()
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    assert not (out / LOCK_FILE).exists()  # released at the end of the run

    finished = snapshot(out)
    log = recipe_process(command(tiny_bert_dir, data, out, 1), tmp_path / "rec-third").fails()
    assert f"ValueError: --output_dir {out} already holds a finished model" in log
    assert snapshot(out) == finished


@pytest.mark.slow
def test_deepspeed_config_without_the_package_stops_before_writing(tiny_bert_dir, data, tmp_path, recipe_process):
    """The shipped ZeRO-2 config through accelerate launch (accelerate refuses before the recipe starts) and a
    DeepSpeed JSON through --deepspeed (the recipe refuses while parsing): named, and nothing written."""
    out = tmp_path / "out"
    flags = recipe_flags(command(tiny_bert_dir, data, out, 1))
    launcher = [Path(sys.executable).with_name("accelerate"), "launch", "--config_file",
                "accelerate_configs/deepspeed_zero2.yaml", "--num_processes", 1, "--main_process_port", free_port()]
    log = recipe_process([*launcher, *flags], tmp_path / "rec-accelerate").fails()
    assert "DeepSpeed is not installed => run `pip3 install deepspeed`" in log
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    log = recipe_process([sys.executable, *flags, "--deepspeed", config], tmp_path / "rec-flag").fails()
    assert "ConfigError: --deepspeed asks for DeepSpeed, but the deepspeed package is not installed: pip install " \
           "deepspeed" in log
    assert not out.exists()
