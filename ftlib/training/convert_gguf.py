"""Convert a local GGUF file (llama.cpp's format) into an ordinary transformers checkpoint folder, once.

    ftlib-convert-gguf --gguf_file SmolLM2-135M-Instruct.Q4_1.gguf --output_dir checkpoints/smollm2
    python -m ftlib.training.convert_gguf --gguf_file FILE.gguf --output_dir DIR [--overwrite]

transformers reads GGUF itself (``from_pretrained(folder, gguf_file=...)``, with the ``gguf`` package) and
dequantizes the weights to float32; the tokenizer, its chat template and the special tokens come from the
file's metadata. What it loads cannot be saved as it is, though: its config keeps a ``quantization_config``
(``quant_method: gguf``) that ``save_pretrained`` and every later load trip over. So the weights move into a
fresh model built from that config without it, which saves as plain safetensors (fp32) with the tokenizer
(chat template included) and the generation config: the run, its checkpoints and its output are then ordinary
transformers folders, and no later step needs ``gguf``.

Converting takes seconds to minutes, so a run does it once: :func:`convert_once` builds into ftlib's cache
(:mod:`ftlib.core.cache`: written aside, renamed into place when complete) under a name that changes when the file
does, and the recipes call it through :func:`ftlib.training.checkpoints.prepare_checkpoint`, the main process first.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import os
from pathlib import Path

from ftlib.core.cache import build_once, cache_root, install_dir, staging_dir

GGUF_MAGIC = b"GGUF"

# What a converted folder holds (the tokenizer may add more: special_tokens_map, chat_template.jinja).
FILES = ("config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json", "tokenizer.json")


def check_gguf(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it is a GGUF file (its first four bytes are ``GGUF``), else a ValueError naming it."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is a folder, not a GGUF file (give the .gguf file inside it, or --gguf_file)")
    with path.open("rb") as handle:
        magic = handle.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{path} is not a GGUF file: it starts with {magic!r}, a GGUF file with {GGUF_MAGIC!r} "
            "(--model_name_or_path takes a checkpoint folder, a Hub id or a .gguf file)"
        )
    return path


def is_converted(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds every file of a converted checkpoint (:data:`FILES`)."""
    return all((Path(folder) / name).is_file() for name in FILES)


def write_converted(folder: str | os.PathLike, gguf_path: str | os.PathLike) -> None:
    """Dequantize ``gguf_path`` to float32 and write model, tokenizer and generation config into ``folder``
    (in place: see :func:`convert` and :func:`convert_once` for the atomic versions)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = check_gguf(gguf_path)
    if importlib.util.find_spec("gguf") is None:  # transformers reads GGUF through it
        raise ValueError(f"converting {gguf_path} needs the gguf package: pip install gguf (or 'ftlib[llm]')")
    where = {"pretrained_model_name_or_path": gguf_path.parent, "gguf_file": gguf_path.name}
    loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(**where)
    config = copy.deepcopy(loaded.config)
    # The GGUF loader's marker: saved, it would make every later load look for a GGUF quantizer.
    config.__dict__.pop("quantization_config", None)
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # strict: every weight of the fresh model comes from the file, and every weight of the file has a place
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = copy.deepcopy(loaded.generation_config)
    del loaded
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def convert(gguf_path: str | os.PathLike, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the converted checkpoint of ``gguf_path`` into ``output_dir``, all files or none.

    They are written into a temporary folder beside ``output_dir``, which is then renamed to it; with
    ``overwrite``, into a non-empty folder, each file replaces its old version (other files stay)."""
    output_dir = Path(output_dir)
    gguf_path = check_gguf(gguf_path)
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty (pass overwrite=True / --overwrite)")
    with staging_dir(output_dir) as staging:
        write_converted(staging, gguf_path)
        if output_dir.is_dir() and any(output_dir.iterdir()):
            for path in staging.iterdir():
                os.replace(path, output_dir / path.name)
        else:
            install_dir(staging, output_dir, is_converted)
    return output_dir


def cache_target(gguf_path: str | os.PathLike) -> Path:
    """Where :func:`convert_once` keeps the conversion of ``gguf_path``: named after the file, and after its
    absolute path, size and modification time, so that another file of the same name, or this one replaced,
    converts anew (hashing the content would cost seconds a run for a multi-gigabyte file)."""
    path = Path(gguf_path).resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / "gguf" / f"{path.stem}-{key}"


def convert_once(gguf_path: str | os.PathLike, target: str | os.PathLike | None = None) -> Path:
    """The converted checkpoint of ``gguf_path`` (at ``target``, default :func:`cache_target`), converting it
    unless a complete one is there."""
    gguf_path = check_gguf(gguf_path)
    target = cache_target(gguf_path) if target is None else Path(target)
    return build_once(target, lambda folder: write_converted(folder, gguf_path), is_converted)


def gguf_location(model_name_or_path: str, gguf_file: str | None) -> Path | None:
    """The GGUF file that ``--model_name_or_path`` (with ``--gguf_file``) names, or None when it names none.

    With ``--gguf_file NAME``, ``--model_name_or_path`` is the folder holding it (as in
    ``from_pretrained(folder, gguf_file=NAME)``) or the file itself. Without, a ``--model_name_or_path`` that is
    a file must be a GGUF file. What is named must exist and be GGUF: the error names it."""
    given = Path(model_name_or_path)
    if gguf_file is None:
        return check_gguf(given) if given.is_file() else None
    if given.is_dir():
        return check_gguf(given / gguf_file)
    if given.is_file():
        if given.name != Path(gguf_file).name:
            raise ValueError(f"--gguf_file {gguf_file} but --model_name_or_path is another file, {given}")
        return check_gguf(given)
    raise ValueError(
        f"--gguf_file {gguf_file}: --model_name_or_path {model_name_or_path} is neither a local folder holding it "
        "nor the file (GGUF files are read from disk: download one first)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf_file", required=True, help="the .gguf file to convert")
    parser.add_argument("--output_dir", required=True, help="checkpoint directory to write")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --output_dir")
    args = parser.parse_args(argv)
    try:
        out = convert(args.gguf_file, args.output_dir, overwrite=args.overwrite)
    except (FileExistsError, ValueError) as err:
        parser.error(str(err))
    # nothing returned: console scripts hand main's return value to sys.exit
    print(f"{args.gguf_file} converted to {out}")


if __name__ == "__main__":
    main()
