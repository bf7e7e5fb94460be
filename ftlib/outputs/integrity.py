"""SHA-256 manifests of finished output directories, and a command that verifies one.

    ftlib-verify path/to/output_dir                 # the run's output directory, as written
    ftlib-verify --snapshot path/to/snapshot        # a downloaded Hub snapshot of the pushed model

fails (exit 1) on any changed, missing or extra file. The manifest lists every file of the result
(checkpoints and logs excepted) and, under ``published``, the ones a push uploads (the manifest itself
is uploaded too): a snapshot lacks the local-only files (``training_args.bin``, ``trainer_state.json``),
so ``--snapshot`` expects exactly the published ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

MANIFEST = "MANIFEST.sha256.json"
# Written last, through this temporary name and an atomic rename: a directory has its manifest only once its
# final save is complete, so one without it is unfinished (ftlib.run.output_dir.prepare_output_dir resumes it).
MANIFEST_PARTIAL = ".ftlib-manifest.partial"
# Not part of a result: written by tools that read the directory, the manifest itself (and its partial copy left
# by a kill), or the lock of the run that writes the directory (ftlib.run.output_dir.LOCK_FILE, present until that run ends).
IGNORED = {MANIFEST, MANIFEST_PARTIAL, ".gitattributes", ".ftlib-run.lock"}
IGNORED_DIRS = {".cache", ".git", ".huggingface"}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path, skip_checkpoints: bool) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or rel.name in IGNORED or set(rel.parts[:-1]) & IGNORED_DIRS:
            continue
        if skip_checkpoints and (rel.parts[0].startswith("checkpoint-") or rel.parts[0] == "runs"):
            continue
        out.append(rel)
    return out


def write_manifest(
    output_dir: str | Path, skip_checkpoints: bool = True, published: Iterable[str | Path] | None = None
) -> Path:
    """Write ``MANIFEST.sha256.json`` listing every file (checkpoints and logs excluded by default);
    ``published``: the files a Hub push uploads (relative paths), recorded so a snapshot can be verified."""
    root = Path(output_dir)
    files = {rel.as_posix(): sha256_file(root / rel) for rel in _files(root, skip_checkpoints)}
    manifest: dict = {"algorithm": "sha256", "files": files}
    if published is not None:
        manifest["published"] = sorted({Path(p).as_posix() for p in published} & set(files))
    path, partial = root / MANIFEST, root / MANIFEST_PARTIAL
    with partial.open("w", encoding="utf-8") as handle:  # complete on disk before it takes the manifest's name
        handle.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    return path


def verify_manifest(output_dir: str | Path, snapshot: bool = False) -> list[str]:
    """Problems found (empty when the directory matches its manifest exactly). ``snapshot``: the directory
    is a download of the pushed model, so exactly the manifest's ``published`` files are expected."""
    root = Path(output_dir)
    path = root / MANIFEST
    if not path.is_file():
        return [f"no {MANIFEST} in {root}"]
    manifest = json.loads(path.read_text())
    expected: dict[str, str] = manifest["files"]
    if snapshot:
        if "published" not in manifest:
            return [f"{MANIFEST} in {root} does not list the published files (written without them)"]
        expected = {name: expected[name] for name in manifest["published"]}
    skip = not any(name.startswith(("checkpoint-", "runs/")) for name in expected)
    actual = {rel.as_posix() for rel in _files(root, skip)}
    problems = [f"missing: {name}" for name in sorted(set(expected) - actual)]
    problems += [f"extra: {name}" for name in sorted(actual - set(expected))]
    for name in sorted(set(expected) & actual):
        if sha256_file(root / name) != expected[name]:
            problems.append(f"changed: {name}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftlib-verify", description="Verify an output directory against its manifest.")
    parser.add_argument("directory")
    parser.add_argument(
        "--snapshot", action="store_true", help="the directory is a downloaded Hub snapshot: expect the published files only"
    )
    args = parser.parse_args(argv)
    root = Path(args.directory)
    if not root.is_dir():
        print(f"{args.directory}: FAILED (not a directory)")
        return 1
    if not (root / MANIFEST).is_file():  # one line, no traceback: the run that wrote it did not finish its final save
        if args.snapshot:
            print(f"{args.directory}: FAILED (no {MANIFEST}: not a snapshot of a model pushed by ftlib)")
            return 1
        print(f"{args.directory}: unfinished (no {MANIFEST}: the run that wrote it did not finish; rerun the same "
              "command to resume it)")
        return 1
    try:
        json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        print(f"{args.directory}: FAILED ({MANIFEST} is unreadable: {err})")
        return 1
    problems = verify_manifest(args.directory, snapshot=args.snapshot)
    for problem in problems:
        print(problem)
    print(f"{args.directory}: {'FAILED' if problems else 'OK'}")
    if problems and not args.snapshot and _only_unpublished_missing(Path(args.directory), problems):
        print("(only files that a push leaves out are missing: for a downloaded Hub snapshot use --snapshot)")
    return 1 if problems else 0


def _only_unpublished_missing(root: Path, problems: list[str]) -> bool:
    manifest = json.loads((root / MANIFEST).read_text())
    published = set(manifest.get("published", manifest["files"]))
    return all(p.startswith("missing: ") and p.removeprefix("missing: ") not in published for p in problems)


if __name__ == "__main__":
    sys.exit(main())
