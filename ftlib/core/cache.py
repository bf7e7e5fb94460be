"""What ftlib builds once and keeps under ``$FTLIB_CACHE`` (default ``~/.cache/ftlib``): converted checkpoints,
exported data sets.

A folder is built in a temporary folder beside its target and renamed into place when every file is written,
so the target is either absent or complete: a kill between two files never leaves a folder that passes as
finished, and processes building the same folder at once (ranks of several nodes on a shared disk, parallel
runs) each get the finished one, with no half-written state in between. What a killed build left behind is
removed by the next build on the same host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path


def cache_root() -> Path:
    """Where ftlib keeps what it builds offline (``$FTLIB_CACHE``, default ``~/.cache/ftlib``)."""
    return Path(os.environ.get("FTLIB_CACHE", Path.home() / ".cache" / "ftlib"))


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{socket.gethostname()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_abandoned(target: str | os.PathLike) -> list[Path]:
    """Remove the staging folders of ``target`` whose builder (a process on this host) is gone; return them."""
    target = Path(target)
    prefix = _staging_prefix(target)
    removed = []
    for path in target.parent.glob(f"{prefix}*") if target.parent.is_dir() else ():
        pid = path.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """An empty folder beside ``target`` (same file system, so a rename moves it), removed on exit if still there."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(target)
    staging = target.parent / f"{_staging_prefix(target)}{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()  # not mkdtemp: the folder keeps the umask's permissions (0700 would lock others out of a cache)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install_dir(staging: Path, target: Path, complete: Callable[[Path], bool]) -> Path:
    """Rename the finished ``staging`` to ``target``. An unfinished ``target`` (written in place by an older ftlib)
    is set aside first and an empty one replaced; a complete one another process installed meanwhile is kept."""
    if target.exists() and not complete(target) and any(target.iterdir()):
        with contextlib.suppress(FileNotFoundError), staging_dir(target) as aside:
            os.rename(target, aside / "unfinished")  # removed with `aside`
    try:
        os.rename(staging, target)  # atomic; replaces an empty folder, fails on a non-empty one
    except OSError:
        if not complete(target):
            raise
    return target


def build_once(target: str | os.PathLike, build: Callable[[Path], object], complete: Callable[[Path], bool]) -> Path:
    """``target``, built by ``build(folder)`` unless it is already ``complete``; see the module docstring."""
    target = Path(target)
    if complete(target):
        return target
    with staging_dir(target) as staging:
        build(staging)
        if not complete(staging):
            raise RuntimeError(f"building {target} did not write every file it needs")
        return install_dir(staging, target, complete)


def write_folder(output_dir: str | os.PathLike, write: Callable[[Path], object], files: tuple[str, ...],
                 complete: Callable[[Path], bool], overwrite: bool = False) -> Path:
    """``write(folder)`` for ``output_dir``, all or none: into a temporary folder beside it, then renamed to it; with
    ``overwrite``, into a non-empty folder, each of ``files`` replaces its old version (other files stay)."""
    output_dir = Path(output_dir)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty (pass overwrite=True / --overwrite)")
    with staging_dir(output_dir) as staging:
        write(staging)
        if output_dir.is_dir() and any(output_dir.iterdir()):
            for name in files:
                os.replace(staging / name, output_dir / name)
        else:
            install_dir(staging, output_dir, complete)
    return output_dir
