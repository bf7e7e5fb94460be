"""The output directory: refuse to destroy a finished result, resume an interrupted one, fail early
when it cannot be written, and belong to one run at a time (:func:`lock_output_dir`)."""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from datetime import datetime
from pathlib import Path

from transformers import TrainerCallback, TrainingArguments

from ftlib.outputs.integrity import MANIFEST
from ftlib.run.cli import ConfigError, config_changes
from ftlib.strategy.arguments import FineTuneArguments

logger = logging.getLogger(__name__)

# A directory holding any of these holds a model (plain, adapter, or a recipe's results): finished when its manifest
# is there too (is_finished), else unfinished (a final save cut short), which a rerun resumes from its checkpoints.
FINISHED_MARKERS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "all_results.json")
# Held (flock) by the main process of the run that owns the directory; names that run. Never pushed (hub.NOT_PUSHED:
# ".ftlib-*"), never in the manifest (integrity.IGNORED), removed when the run releases it.
LOCK_FILE = ".ftlib-run.lock"
_held: dict[str, tuple[int, int]] = {}  # lock file path -> (descriptor, pid) for the directories this process holds
# directory -> its results when prepare_output_dir judged it: the lock (taken later, when training begins) refuses a
# directory whose results changed meanwhile, where another run finished or saved while this one was loading
_judged: dict[str, frozenset[str]] = {}


def _results(path: Path) -> frozenset[str]:
    """What in ``path`` decides :func:`prepare_output_dir`'s verdict: model files, manifest, checkpoint folders."""
    if not path.is_dir():
        return frozenset()
    names = {m for m in (*FINISHED_MARKERS, MANIFEST) if (path / m).exists()}
    return frozenset(names | {c.name for c in path.glob("checkpoint-*") if c.is_dir()})


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
    - a finished model there (its manifest present, :func:`is_finished`): error unless ``overwrite`` (nothing is
      deleted either way: files are replaced only as the new run saves its own);
    - an unfinished one (model files, no manifest: a kill during the final save): resume from the last complete
      checkpoint and redo the final save, with a warning; error saying so when there is no checkpoint;
    - ``checkpoint-*`` folders there and no explicit choice: resume from the last complete one (see
      :func:`last_complete_checkpoint`; ``world_size``: the processes of this run);
    - less free space than ``min_free_bytes``: error with both figures.
    """
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output_dir {path} exists and is a file, not a directory")
    _judged[str(path.absolute())] = _results(path)
    unfinished = False  # model files but no manifest: a final save that was cut short (see is_finished)
    if path.is_dir() and not overwrite:
        present = [m for m in FINISHED_MARKERS if (path / m).exists()]
        if present and not resume_from_checkpoint:
            if is_finished(path):
                raise ValueError(
                    f"--output_dir {path} already holds a finished model ({', '.join(present)}); "
                    "pass --overwrite_output_dir to replace it, or choose another directory"
                )
            if last_complete_checkpoint(path, world_size) is None:
                raise ValueError(
                    f"--output_dir {path} holds an unfinished output ({', '.join(present)} but no {MANIFEST}: "
                    "a run stopped during its final save, or the output predates manifests) and no complete "
                    "checkpoint-* folder to resume from; pass --overwrite_output_dir to train again from the "
                    "start (its files are replaced), or choose another directory"
                )
            unfinished = True
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
    if unfinished:
        logger.warning("%s holds an unfinished final save (model files but no %s): resuming from %s and redoing "
                       "the final save (pass --overwrite_output_dir to start over)", path, MANIFEST, last)
    elif last is not None:
        logger.warning("resuming from %s (pass --overwrite_output_dir to start over)", last)
    return last


def is_finished(output_dir: str | os.PathLike) -> bool:
    """A run's output is finished when its manifest is there: :func:`ftlib.outputs.integrity.write_manifest` writes
    it last, atomically, once every file of the final save is complete."""
    return (Path(output_dir) / MANIFEST).is_file()


def output_dir_holder(output_dir: str | os.PathLike) -> str | None:
    """Who holds ``output_dir`` (``pid ... on host ..., started ...``) when another live run does, else None.
    Writes nothing: an unheld lock file left by a killed run is free."""
    path = Path(output_dir) / LOCK_FILE
    if str(path.absolute()) in _held:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        holder = {}
    if not holder.get("pid"):
        return "a run that is starting"
    return f"pid {holder['pid']} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


def check_not_in_use(output_dir: str | os.PathLike) -> None:
    """Raise, naming the holder, when another live run holds ``output_dir`` (see :func:`lock_output_dir`)."""
    holder = output_dir_holder(output_dir)
    if holder is not None:
        raise _in_use(output_dir, holder)


def _in_use(output_dir, holder: str) -> ValueError:
    return ValueError(
        f"--output_dir {output_dir} is in use by another run ({holder}); wait until it ends or choose another "
        f"--output_dir (its lock, {LOCK_FILE}, goes away with that process)"
    )


def lock_output_dir(output_dir: str | os.PathLike) -> None:
    """Take ``output_dir`` for this run (the main process, after :func:`prepare_output_dir`): an exclusive
    ``flock`` on :data:`LOCK_FILE`, which records pid, host and start time. The kernel drops it when the
    process ends, however it ends; :func:`release_output_dir` (or the exit) removes the file. Raises naming
    the holder when another run has it, or when the directory's results changed since :func:`prepare_output_dir`
    judged them (another run saved or finished there meanwhile: the verdict, such as "fresh" or "resume from
    checkpoint-4", no longer holds). Taking a directory this process already holds does nothing."""
    path = Path(output_dir) / LOCK_FILE
    key = str(path.absolute())
    if key in _held:
        return
    for _ in range(10):  # the holder may remove the file between our open and our lock: then lock the new one
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise _in_use(output_dir, holder) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    else:
        raise _in_use(output_dir, "another run keeps replacing its lock")
    judged = _judged.pop(str(Path(output_dir).absolute()), None)
    now = _results(Path(output_dir))
    if judged is not None and now != judged:
        os.unlink(path)  # while locked, as release_output_dir does: we wrote nothing else
        os.close(fd)
        changes = [f"{name} appeared" for name in sorted(now - judged)] + [f"{name} went" for name in sorted(judged - now)]
        raise ValueError(
            f"--output_dir {output_dir} changed while this run was starting ({', '.join(changes)}): another run "
            "wrote there. Nothing was written; run again to decide anew (it resumes or refuses a finished model), "
            "or choose another --output_dir"
        )
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().astimezone().isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    if not _held:
        atexit.register(_release_all)
    _held[key] = (fd, os.getpid())


def release_output_dir(output_dir: str | os.PathLike) -> None:
    """Give ``output_dir`` up: remove the lock file, then unlock (nothing when this process does not hold it)."""
    key = str((Path(output_dir) / LOCK_FILE).absolute())
    fd, pid = _held.pop(key, (None, None))
    if fd is None or pid != os.getpid():  # a forked child (data workers) never releases its parent's lock
        return
    try:
        os.unlink(key)  # while still locked: a run that opened it meanwhile finds it gone and retries
    except FileNotFoundError:
        pass
    os.close(fd)  # closing the only descriptor drops the flock


def _release_all() -> None:
    for key in list(_held):
        release_output_dir(Path(key).parent)


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


CONFIG_FILE = "config.yaml"


def check_resume_config(checkpoint: str, config: str, allow_change: bool = False) -> None:
    """Before anything loads: refuse to resume from ``checkpoint`` when the configuration it saved
    (``config.yaml``, see :class:`TakeOutputDir`) differs from this run's ``config`` outside
    :data:`ftlib.run.cli.RESUMABLE_KEYS`, naming every key and both values; ``allow_change``
    (``--allow_config_change``) logs the changes and resumes. A checkpoint without it (older runs) resumes
    with a warning."""
    saved_file = Path(checkpoint) / CONFIG_FILE
    if not saved_file.is_file():
        logger.warning("%s has no %s (saved by an older ftlib): resuming without checking that its configuration "
                       "matches this run's", checkpoint, CONFIG_FILE)
        return
    changes = config_changes(saved_file.read_text(encoding="utf-8"), config)
    if not changes:
        return
    listed = "; ".join(f"{key}: {old!r} in the checkpoint, {new!r} now" for key, (old, new) in changes.items())
    if allow_change:
        logger.warning("--allow_config_change: resuming from %s with a changed configuration (%s); its optimizer "
                       "and scheduler state keep the checkpoint's learning rates", checkpoint, listed)
        return
    raise ConfigError(
        f"resuming from {checkpoint}, saved with a different configuration: {listed}. Resuming would mix the two "
        "(the checkpoint's optimizer and scheduler state keep its learning rates). Run with the checkpoint's "
        "values, pass --allow_config_change true to resume anyway, or --overwrite_output_dir true to start over"
    )


def claim_output_dir(training_args: TrainingArguments, ft_args: FineTuneArguments) -> str | None:
    """Check and take ``--output_dir`` for this run; returns the checkpoint to resume from, if any.

    The main process refuses a directory another run holds (naming it, before writing anything there) and runs
    :func:`prepare_output_dir`; :func:`train` locks the directory (:func:`lock_output_dir`, released at the end
    of :func:`publish` or when the process ends) when training begins, so a run that stops on bad input leaves
    no trace. The other processes learn its verdict, so that all of them stop
    together, and then check the directory themselves."""
    output_dir = training_args.output_dir

    def prepare():
        return prepare_output_dir(output_dir, overwrite=ft_args.overwrite_output_dir,
                                  resume_from_checkpoint=training_args.resume_from_checkpoint,
                                  world_size=training_args.world_size)

    error, resume = None, None
    if training_args.process_index == 0:
        try:
            check_not_in_use(output_dir)  # writes nothing; train() takes the lock
            resume = prepare()
        except ValueError as err:
            error = err
    if training_args.world_size > 1:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            verdict = [None if error is None else str(error)]
            dist.broadcast_object_list(verdict, src=0)
            if verdict[0] is not None and error is None:
                raise ValueError(verdict[0])
    if error is not None:
        raise error
    return resume if training_args.process_index == 0 else prepare()


def take_output_dir(output_dir: str | Path, config: str | None) -> None:
    """The main process takes ``output_dir`` when it starts writing there (training, or cross-validation before
    it, :mod:`ftlib.run.cv`): lock it (:func:`lock_output_dir`; nothing when this process holds it already), mark its
    output unfinished (the manifest goes until :func:`publish` writes a new one) and write ``config.yaml``."""
    lock_output_dir(output_dir)
    (Path(output_dir) / MANIFEST).unlink(missing_ok=True)
    if config:
        (Path(output_dir) / CONFIG_FILE).write_text(config, encoding="utf-8")


class TakeOutputDir(TrainerCallback):
    """When training begins (not before: a run that stops on bad input leaves no trace), the main process locks
    the output directory (:func:`lock_output_dir`; raises naming the holder when another run took it since the
    start) and writes ``config.yaml``, the run's effective configuration; and into every checkpoint it saves, so
    that a resume can compare (:func:`check_resume_config`). Checkpoints are never pushed (``hub.NOT_PUSHED``)."""

    def __init__(self, config: str | None):
        self.config = config

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            take_output_dir(args.output_dir, self.config)

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and self.config and folder.is_dir():
            (folder / CONFIG_FILE).write_text(self.config, encoding="utf-8")
