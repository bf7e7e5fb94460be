"""SHA-256 manifests of finished output directories, and a command that verifies one.

    ftlib-verify path/to/output_dir        # or a downloaded Hub snapshot folder

fails (exit 1) on any changed, missing or extra file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

MANIFEST = "MANIFEST.sha256.json"
# Not part of a result: written by tools that read the directory, or the manifest itself.
IGNORED = {MANIFEST, ".gitattributes"}
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


def write_manifest(output_dir: str | Path, skip_checkpoints: bool = True) -> Path:
    """Write ``MANIFEST.sha256.json`` listing every file (checkpoints and logs excluded by default)."""
    root = Path(output_dir)
    files = {rel.as_posix(): sha256_file(root / rel) for rel in _files(root, skip_checkpoints)}
    path = root / MANIFEST
    path.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=1, sort_keys=True) + "\n")
    return path


def verify_manifest(output_dir: str | Path) -> list[str]:
    """Problems found (empty when the directory matches its manifest exactly)."""
    root = Path(output_dir)
    path = root / MANIFEST
    if not path.is_file():
        return [f"no {MANIFEST} in {root}"]
    expected: dict[str, str] = json.loads(path.read_text())["files"]
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
    args = parser.parse_args(argv)
    problems = verify_manifest(args.directory)
    for problem in problems:
        print(problem)
    print(f"{args.directory}: {'FAILED' if problems else 'OK'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
