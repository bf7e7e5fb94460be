"""The output directory: refuse to destroy a finished result, resume an interrupted one, fail early
when it cannot be written."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

# A directory holding any of these holds a finished model (plain, adapter, or a recipe's results).
FINISHED_MARKERS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "all_results.json")


def prepare_output_dir(
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume_from_checkpoint: str | bool | None = None,
    min_free_bytes: int = 0,
    world_size: int = 1,
) -> str | None:
    """Check ``output_dir`` before anything trains; returns the checkpoint to resume from, if any.

    - a path that is a file, or a directory that cannot be written: error naming it;
    - a finished model there: error unless ``overwrite`` (nothing is deleted either way: files are
      replaced only as the new run saves its own);
    - ``checkpoint-*`` folders there and no explicit choice: resume from the last complete one (see
      :func:`last_complete_checkpoint`; ``world_size``: the processes of this run);
    - less free space than ``min_free_bytes``: error with both figures.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir {path} exists and is a file, not a directory")
    if path.is_dir() and not overwrite:
        finished = [m for m in FINISHED_MARKERS if (path / m).exists()]
        if finished and not resume_from_checkpoint:
            raise ValueError(
                f"--output_dir {path} already holds a finished model ({', '.join(finished)}); "
                "pass --overwrite_output_dir to replace it, or choose another directory"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in path.parents if p.exists()), None)
        why = f"{blocker} is a file" if blocker is not None and not blocker.is_dir() else err.strerror
        raise ValueError(f"--output_dir {path} cannot be created: {why}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".ftlib-write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"--output_dir {path} is not writable: {err.strerror}") from None
    check_free_space(path, min_free_bytes)
    if resume_from_checkpoint is True:
        last = last_complete_checkpoint(path, world_size)
        if last is None:
            raise ValueError(f"--resume_from_checkpoint: no complete checkpoint-* folder in {path}")
        return last
    if resume_from_checkpoint:
        if not Path(resume_from_checkpoint).is_dir():
            raise ValueError(f"--resume_from_checkpoint {resume_from_checkpoint} is not a directory")
        return str(resume_from_checkpoint)
    if overwrite:
        return None
    last = last_complete_checkpoint(path, world_size)
    if last is not None:
        logger.warning("resuming from %s (pass --overwrite_output_dir to start over)", last)
    return last


def last_complete_checkpoint(output_dir: str | os.PathLike, world_size: int = 1) -> str | None:
    """The ``checkpoint-<step>`` folder with the highest step that was completely written.

    Trainer writes a checkpoint in place, its ``trainer_state.json`` last, so a run killed while saving
    leaves a folder with weights but no (or a truncated) state: resuming from it would fail. With several
    processes, each writes its own ``rng_state_<rank>.pth`` and the main one may finish the state before
    another rank's file is there: a folder that has RNG states but not one per rank would resume
    silently inexact. Such folders are skipped with a warning, and overwritten when training passes them again.
    """
    steps = []
    for child in Path(output_dir).iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and child.is_dir():
            steps.append((int(match.group(1)), child))
    for _, child in sorted(steps, reverse=True):
        try:
            json.loads((child / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            logger.warning("skipping %s: no complete trainer_state.json (a save was interrupted)", child)
            continue
        ranks = [child / f"rng_state_{rank}.pth" for rank in range(world_size)]
        if world_size > 1 and any(child.glob("rng_state*.pth")) and not all(p.is_file() for p in ranks):
            logger.warning("skipping %s: the RNG state of a process is missing (a save was interrupted)", child)
            continue
        return str(child)
    return None


def check_free_space(output_dir: str | os.PathLike, needed_bytes: int) -> None:
    """Error with both figures when ``output_dir``'s file system has less than ``needed_bytes`` free."""
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise ValueError(
            f"--output_dir {output_dir}: {free / 2**20:.0f} MiB free, the run needs about {needed_bytes / 2**20:.0f} MiB "
            "for its checkpoints and model"
        )


def checkpoint_bytes(model, checkpoints: int) -> int:
    """Rough disk need of a run: per kept checkpoint the weights plus two Adam moments of the trainable
    ones, plus the final model."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return (weights + moments) * checkpoints + weights
