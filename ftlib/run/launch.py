"""Launch checks: the processes that were started, the engine that was asked for and what Trainer will do
with them must agree, or the run stops before it loads or writes anything.

Seen without these checks (2 CPU processes): ``accelerate launch --multi_gpu --num_processes 2`` without
``--use_cpu true``, or an FSDP config on a machine without GPUs, exits 0 after each process trained the whole
model on its own and all of them wrote the same output directory; transformers only warns
"parallel_mode != ParallelMode.DISTRIBUTED".
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from ftlib.core.options import option_name
from ftlib.strategy.arguments import FineTuneArguments

# Trainer drives the launched processes together in these modes (DDP, FSDP, DeepSpeed, TPU, SageMaker).
_TOGETHER = (ParallelMode.DISTRIBUTED, ParallelMode.TPU, ParallelMode.SAGEMAKER_DATA_PARALLEL,
             ParallelMode.SAGEMAKER_MODEL_PARALLEL)


@dataclass(frozen=True)
class Launch:
    """What was launched and asked for, as this process sees it."""

    processes: int  # launched processes in all (WORLD_SIZE, or the initialised process group)
    local_processes: int  # of them on this machine (LOCAL_WORLD_SIZE)
    together: bool  # Trainer drives them as one distributed run
    engine: str | None  # "FSDP", "DeepSpeed" or None
    asked_by: str  # where the engine was asked for, for the message
    shards_weights: bool  # the weights are split between processes (FSDP sharding, ZeRO-3)
    flattens: bool  # the engine replaces the model's parameters by flat buffers (FSDP v1 without use_orig_params)
    devices: int  # accelerator devices this process may use (0 with --use_cpu)
    use_cpu: bool
    gathers_16bit: bool | None = None  # ZeRO-3: the weights are gathered for the final save (None: not ZeRO-3 or unknown)


def _true(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _accelerator_devices() -> int:
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        current = accelerator.current_accelerator()
        return 0 if current is None or current.type == "mps" else accelerator.device_count()  # no FSDP/NCCL on MPS
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _zero_config(config) -> dict:
    """The ``zero_optimization`` section of a DeepSpeed config (a dict or a JSON file), empty when it cannot be read."""
    if isinstance(config, (str, os.PathLike)):
        try:
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
    zero = config.get("zero_optimization") if isinstance(config, dict) else None
    return zero if isinstance(zero, dict) else {}


def _zero_stage(config) -> int | None:
    """ZeRO stage of a DeepSpeed config (a dict or a JSON file), None when it cannot be read."""
    stage = _zero_config(config).get("stage")
    return int(stage) if isinstance(stage, (int, str)) and str(stage).isdigit() else None


def _gathers_16bit(config) -> bool | None:
    """``stage3_gather_16bit_weights_on_model_save`` of a DeepSpeed config; None when absent, "auto" or unreadable."""
    value = _zero_config(config).get("stage3_gather_16bit_weights_on_model_save")
    return None if value is None or str(value).lower() == "auto" else _true(value)


def describe_launch(training_args: TrainingArguments, env=None) -> Launch:
    """Read the launch from ``training_args`` and the environment that ``accelerate launch`` / torchrun set."""
    env = os.environ if env is None else env
    processes = int(env.get("WORLD_SIZE", "1") or 1)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        processes = max(processes, dist.get_world_size())
    local = int(env.get("LOCAL_WORLD_SIZE", "0") or 0) or processes
    together = training_args.parallel_mode in _TOGETHER
    use_cpu = bool(training_args.use_cpu) or _true(env.get("ACCELERATE_USE_CPU", "false"))
    engine, asked_by, shards, flattens, gathers_16bit = None, "", False, False, None
    if getattr(training_args, "fsdp", None) or _true(env.get("ACCELERATE_USE_FSDP", "false")):
        engine = "FSDP"
        if getattr(training_args, "fsdp", None):
            config = training_args.fsdp_config or {}
            version = int(config.get("version", config.get("fsdp_version", 2)))
            orig = _true(config.get("use_orig_params", config.get("fsdp_use_orig_params", "true")))
            strategy = str(config.get("sharding_strategy", "FULL_SHARD"))
            asked_by = "--fsdp"
        else:
            version = int(env.get("FSDP_VERSION", "1") or 1)
            orig = _true(env.get("FSDP_USE_ORIG_PARAMS", "false"))
            strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD")
            asked_by = "the accelerate config (distributed_type: FSDP)"
        shards = strategy.upper() not in ("NO_SHARD", "3")
        flattens = version == 1 and not orig
    elif getattr(training_args, "deepspeed", None) or _true(env.get("ACCELERATE_USE_DEEPSPEED", "false")):
        engine = "DeepSpeed"
        if getattr(training_args, "deepspeed", None):
            stage, asked_by = _zero_stage(training_args.deepspeed), "--deepspeed"
            gathers = _gathers_16bit(training_args.deepspeed) or False  # DeepSpeed's default: not gathered
        else:
            stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
            file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
            stage = int(stage) if stage and stage.isdigit() else _zero_stage(file)
            # accelerate: the config file's value when it sets one, else zero3_save_16bit_model (default false)
            gathers = _gathers_16bit(file) if file and file != "none" else None
            if gathers is None:
                gathers = _true(env.get("ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "false"))
            asked_by = "the accelerate config (distributed_type: DEEPSPEED)"
        shards = stage == 3
        gathers_16bit = gathers if shards else None
    devices = 0 if use_cpu else _accelerator_devices()
    return Launch(processes, local, together, engine, asked_by, shards, flattens, devices, use_cpu, gathers_16bit)


def deepspeed_missing(asked_by: str) -> str:
    """The message for a DeepSpeed launch without the ``deepspeed`` package."""
    return (f"{asked_by} asks for DeepSpeed, but the deepspeed package is not installed: pip install deepspeed "
            "(it builds against the installed torch and CUDA), or launch without DeepSpeed (FSDP: "
            "accelerate_configs/fsdp.yaml; DDP: accelerate_configs/multi_gpu.yaml)")


def _deepspeed_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def cpu_launch_line(processes: int) -> str:
    """The command that runs ``processes`` data-parallel CPU processes (gloo), as the README gives it."""
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "recipes/<recipe>.py"
    return f"accelerate launch --multi_gpu --num_processes {processes} {script} ... --use_cpu true"


def check_launch(training_args: TrainingArguments, ft_args: FineTuneArguments, env=None) -> None:
    """Stop, naming the launch setting and the fix, when the launch and what Trainer will do disagree:
    an engine asked for without the devices it needs (or, for DeepSpeed, without its package), several processes
    that Trainer would not distribute (each training its own copy and all writing one output directory), a strategy
    the engine cannot run, or ZeRO-3 without the gathering of the weights that the final save needs."""
    launch = describe_launch(training_args, env)
    n = max(launch.processes, 2)
    if launch.engine and launch.devices == 0:
        why = "--use_cpu true is set" if launch.use_cpu else "this machine has no GPU"
        raise ValueError(
            f"{launch.asked_by} asks for {launch.engine}, which shards the model over GPUs, but {why}: Trainer would "
            f"shard nothing and run {launch.processes} separate copies. Without GPUs, run data-parallel on CPU "
            f"instead (drop the {launch.engine} config): {cpu_launch_line(n)}"
        )
    if launch.engine and launch.local_processes > launch.devices:
        raise ValueError(
            f"{launch.engine} ({launch.asked_by}) with {launch.local_processes} processes on this machine, which has "
            f"{launch.devices} GPU(s): launch one process per GPU (--num_processes {launch.devices})"
        )
    if launch.processes > 1 and not launch.together:
        mode = option_name(training_args.parallel_mode)
        hint = ("add --use_cpu true to the recipe's flags on a machine without GPUs: " + cpu_launch_line(launch.processes)
                if launch.devices == 0 else f"launch at most one process per GPU (this machine has {launch.devices})")
        raise ValueError(
            f"{launch.processes} processes were launched (WORLD_SIZE={launch.processes}) but Trainer would not "
            f"distribute them (parallel_mode {mode}, not distributed): each would train the whole model on its own and "
            f"all would write the same --output_dir. To run them data-parallel, {hint}"
        )
    if not launch.engine:
        return
    if launch.engine == "DeepSpeed" and not _deepspeed_installed():
        raise ValueError(deepspeed_missing(launch.asked_by))
    for flag, on in (("--gradual_unfreeze", ft_args.gradual_unfreeze), ("--head_warmup_steps", ft_args.head_warmup_steps),
                     ("--lr_find", ft_args.lr_find), ("--compare_head_only yes", ft_args.compare_head_only == "yes"),
                     ("--probe_first yes", ft_args.probe_first == "yes")):
        if on:  # the same refusal as FtTrainer's, before anything loads
            raise ValueError(f"{flag} works with single-device and DDP runs, not FSDP or DeepSpeed "
                             f"({launch.asked_by})")
    if launch.gathers_16bit is False:
        raise ValueError(
            f"DeepSpeed ZeRO-3 ({launch.asked_by}) shards the weights, and gathers them for the final save only with "
            "zero3_save_16bit_model: true in the accelerate config (stage3_gather_16bit_weights_on_model_save: true in "
            "a DeepSpeed JSON config); without it the run would end with no loadable model: set it, as "
            "accelerate_configs/deepspeed_zero3.yaml does"
        )
    if launch.flattens:
        used = [flag for flag, on in (
            ("--layer_decay", ft_args.layer_decay != 1.0), ("--head_learning_rate", ft_args.head_learning_rate is not None),
            ("--freeze_embeddings", ft_args.freeze_embeddings), ("--freeze_lower_blocks", ft_args.freeze_lower_blocks),
            ("--train_top_blocks", ft_args.train_top_blocks), ("--freeze_patterns", ft_args.freeze_patterns),
            ("--head_only", ft_args.head_only), ("--lora", ft_args.lora)) if on]
        what = ", ".join(used) if used else "no weight decay on biases and norms (always on)"
        raise ValueError(
            f"FSDP v1 without use_orig_params ({launch.asked_by}) flattens the model's parameters into one buffer per "
            f"wrapped module, so ftlib's per-parameter optimizer groups and freezing cannot apply ({what}): set "
            "fsdp_use_orig_params: true in the accelerate config (or use fsdp_version: 2, as accelerate_configs/fsdp.yaml does)"
        )
