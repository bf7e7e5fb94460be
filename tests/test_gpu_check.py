"""bench/gpu_check.py (issue 11 item 4): its --cpu-smoke mode runs every check with tiny models on CPU, the rows that
need CUDA skipped as such, and exits 0; the exit status and the peak table, in-process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_exit_status_and_peaks():
    check = gpu_check()
    row = check.Row
    ok = [row("a", "", "", "pass"), row("b", "", "", check.SKIP), row("c", "", "", "info")]
    assert check.exit_code(ok) == 0 and check.exit_code(ok, strict=True) == 0
    missed = [*ok, row("d", "", "", "below aim")]
    assert check.exit_code(missed) == 0 and check.exit_code(missed, strict=True) == 1
    assert check.exit_code([*ok, row("e", "", "", "FAIL")]) == 1
    with pytest.raises(AssertionError):
        row("f", "", "", "fine")
    assert check.peak_tflops_of("NVIDIA H200") == 989
    assert check.peak_tflops_of("NVIDIA H100 PCIe") == 756 and check.peak_tflops_of("NVIDIA H100 80GB HBM3") == 989
    assert check.peak_tflops_of("NVIDIA A100-SXM4-80GB") == 312 and check.peak_tflops_of("NVIDIA L40S") == 362
    assert check.peak_tflops_of("NVIDIA L4") == 121 and check.peak_tflops_of("Tesla T4") is None


def test_zero3_without_deepspeed_and_a_missing_sst2_folder_are_said(tmp_path, monkeypatch):
    from importlib import util

    check = gpu_check()
    monkeypatch.setattr(check, "cuda", lambda: True)  # as on a GPU machine
    real_find_spec = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a))
    [row] = check.zero3_check(tmp_path, check.GPU_PLAN)
    assert (row.status, row.result) == (check.SKIP_DEEPSPEED, "not run: pip install deepspeed")
    with pytest.raises(FileNotFoundError, match=f"--sst2 {tmp_path}: no train.tsv there"):
        check.bf16_vs_fp32(tmp_path, check.GPU_PLAN, tmp_path)


EXPECTED = {  # check -> status in --cpu-smoke
    "text speed, plain Trainer (eager)": "skipped: needs CUDA",
    "text speed, recipe (eager)": "skipped: needs CUDA",
    "text speed, plain Trainer (--torch_compile)": "skipped: needs CUDA",
    "text speed, recipe (--torch_compile)": "skipped: needs CUDA",
    "FSDP engine": "skipped: needs CUDA",
    "LoRA adapter saved, reloaded = trained": "pass",
    "LoRA adapter saved (FULL_STATE_DICT), reloaded = trained": "pass",
    "LoRA merged save (gathered) = adapter merged": "pass",
    "killed after checkpoint-2, resumed = uninterrupted": "pass",
    "ZeRO-3 save (gathered) = trained": "skipped: needs CUDA",
    "image speed, recipe": "info",
    "image input pipeline alone": "info",
    "object detection speed, recipe": "info",
    "semantic seg speed, recipe": "info",
    "bf16 vs fp32 eval accuracy (within 0.5)": "skipped: needs CUDA",
    "causal LM speed, SFTTrainer (unpacked)": "skipped: needs CUDA",
    "causal LM speed, recipe (unpacked)": "skipped: needs CUDA",
    "causal LM speed, SFTTrainer (--packing)": "skipped: needs CUDA",
    "causal LM speed, recipe (--packing)": "skipped: needs CUDA",
    "QLoRA (--load_in_4bit) trained, adapter saved": "skipped: needs CUDA",
    "QLoRA peak GPU memory vs bf16 LoRA": "skipped: needs CUDA",
    "FSDP wraps the decoder layer (causal LM)": "skipped: needs CUDA",
    "causal LM LoRA adapter saved, reloaded = trained": "pass",
    "causal LM killed after checkpoint-2, resumed = uninterrupted": "pass",
}


@pytest.mark.slow
def test_cpu_smoke_runs_every_check(tmp_path):
    out = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--json", str(out), "--keep", str(tmp_path / "w")],
                         check=False, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["check"]: r["status"] for r in rows} == EXPECTED, rows
    results = {r["check"]: r["result"] for r in rows}
    assert "samples/s" in results["text speed, recipe (eager)"] and "x plain" in results["text speed, recipe (eager)"]
    assert results["text speed, recipe (--torch_compile)"] == "not run"
    assert results["LoRA adapter saved, reloaded = trained"].endswith("0 missing, max abs diff 0")
    # one CPU process resumes bit for bit, and the parameter groups' learning rates are logged and equal
    assert results["killed after checkpoint-2, resumed = uninterrupted"].startswith("exact; ")
    assert " groups' LRs equal at steps 3-6" in results["killed after checkpoint-2, resumed = uninterrupted"]
    assert "images/s" in results["image input pipeline alone"]
    assert "| check | setting | result | status |" in run.stdout
    assert "tokens/s" in results["causal LM speed, recipe (--packing)"]
    assert "x SFTTrainer" in results["causal LM speed, recipe (--packing)"]
    assert results["causal LM LoRA adapter saved, reloaded = trained"].endswith("0 missing, max abs diff 0")
    assert results["causal LM killed after checkpoint-2, resumed = uninterrupted"].startswith("exact; ")
    assert "ok: 0 failed, 0 below aim, 14 skipped" in run.stdout
