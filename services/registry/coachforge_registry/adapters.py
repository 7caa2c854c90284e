"""What a PEFT LoRA adapter is (read from its own files) and whether the engines can serve it."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from coachforge_shared.errors import InvalidArgument
from coachforge_shared.redact import plain_name

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLED_WEIGHTS = "adapter_model.bin"
"""PyTorch's pickle format, which can run code when it is loaded: refused, never stored."""
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
"""The only files of an adapter the registry stores and the engines are given; others are ignored."""
MAX_CONFIG_BYTES = 1024**2
"""Largest adapter_config.json read (PEFT writes about 1 KB)."""
MAX_HEADER_BYTES = 16 * 1024**2
"""Largest safetensors header read (a LoRA adapter's is a few KB; the safetensors library stops at 100 MB)."""
SAFETENSORS_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
"""Tensor types (and their sizes in bytes) of LoRA weights; integer, boolean or 8-bit tensors are refused."""
MAX_TENSOR_DIM = 1 << 24
# vLLM serves LoRA on these linear projections; embeddings / lm_head need extra engine flags.
SUPPORTED_TARGET_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})


@dataclass
class AdapterFacts:
    """The compatibility facts of an adapter."""

    base_model_name_or_path: str
    lora_rank: int
    target_modules: list[str]
    modules_to_save: list[str] = field(default_factory=list)
    peft_type: str = "LORA"


def incompatible(message: str, param: str) -> InvalidArgument:
    return InvalidArgument(f"Incompatible adapter: {message}", param=param, code="incompatible_adapter")


def invalid_adapter(message: str, param: str) -> InvalidArgument:
    return InvalidArgument(message, param=param, code="invalid_adapter")


def pickled_weights_refused(param: str) -> InvalidArgument:
    return invalid_adapter(f"{PICKLED_WEIGHTS} is a pickle file, which can run code when it is loaded, and is not "
                           f"accepted: save the adapter with safetensors (PEFT's save_pretrained does by default, "
                           f"safe_serialization=True) and send {ADAPTER_WEIGHTS}.", param)


def _regular_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def read_adapter(adapter_dir: Path, param: str = "file") -> AdapterFacts:
    """Read ``adapter_config.json`` and check the safetensors weights (header, tensors' dtypes, shapes
    and offsets); pickled weights (``adapter_model.bin``) are refused. Both files must be regular
    files (not links); nothing else in the folder is read. The LoRA rank is the larger of the
    config's ``r`` and the weights' own (a ``rank_pattern`` may raise some modules' rank)."""
    if (adapter_dir / PICKLED_WEIGHTS).exists() or (adapter_dir / PICKLED_WEIGHTS).is_symlink():
        raise pickled_weights_refused(param)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not _regular_file(config_path):
        raise invalid_adapter(f"The adapter has no {ADAPTER_CONFIG}.", param)
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise invalid_adapter(f"{ADAPTER_CONFIG} is larger than {MAX_CONFIG_BYTES} bytes.", param)
    try:
        config = json.loads(config_path.read_bytes().decode("utf-8"))
    except RecursionError:
        raise invalid_adapter(f"{ADAPTER_CONFIG} is not valid JSON: nested too deeply.", param) from None
    except ValueError as err:  # bad JSON or UTF-8, an integer too long to convert
        raise invalid_adapter(f"{ADAPTER_CONFIG} is not valid JSON: {err}", param) from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"{ADAPTER_CONFIG} must be a JSON object.", param=param, code="invalid_adapter")
    peft_type = str(config.get("peft_type", "LORA"))
    if peft_type.upper() != "LORA":
        raise incompatible(f"peft_type {peft_type!r} is not LORA.", param)
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidArgument(f"{ADAPTER_CONFIG} has no positive integer 'r' (LoRA rank).", param=param,
                              code="invalid_adapter")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        raise incompatible(f"target_modules is the pattern {targets!r}; the engines need an explicit list of "
                           f"modules among {', '.join(sorted(SUPPORTED_TARGET_MODULES))}.", param)
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidArgument(f"{ADAPTER_CONFIG} has no target_modules list.", param=param, code="invalid_adapter")
    to_save = config.get("modules_to_save") or []
    if not isinstance(to_save, list):
        to_save = [str(to_save)]
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not _regular_file(weights):
        raise invalid_adapter(f"The adapter has no weights ({ADAPTER_WEIGHTS}).", param)
    weights_rank = _check_safetensors(weights, param)
    return AdapterFacts(base_model_name_or_path=str(config.get("base_model_name_or_path") or ""),
                        lora_rank=max(rank, weights_rank),
                        target_modules=sorted({t.rsplit(".", 1)[-1] for t in targets}),
                        modules_to_save=[str(m) for m in to_save], peft_type=peft_type.upper())


class _BadSafetensors(ValueError):
    pass


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_safetensors(path: Path, param: str) -> int:
    """Check a safetensors file as the safetensors library does before it loads one, and that its
    tensors look like LoRA weights; return the largest LoRA rank its ``lora_A``/``lora_B`` pairs
    have (0 when it holds none).

    The format: an 8-byte little-endian header length, that much JSON, then the tensors' data. The
    header maps each tensor's name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets
    into the data) and may hold ``__metadata__`` (strings to strings). Each tensor's offsets must
    span exactly its dtype's size times its shape's product, the tensors must tile the data with
    no gap, overlap or trailing bytes, dtypes must be floating point, shapes 1-D or 2-D."""

    def bad(reason: str) -> _BadSafetensors:
        return _BadSafetensors(reason)

    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad("shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise bad(f"its header of {length} bytes is larger than {MAX_HEADER_BYTES} bytes")
            if length > size - 8:
                raise bad("the header length exceeds the file")
            try:
                header = json.loads(f.read(length).decode("utf-8"))
            except RecursionError:
                raise bad("the header is nested too deeply") from None
            except ValueError as err:
                raise bad(f"the header is not JSON: {err}") from None
        if not isinstance(header, dict):
            raise bad("the header is not a JSON object")
        data_size = size - 8 - length
        spans: list[tuple[int, int, str]] = []
        ranks: dict[str, dict[str, int]] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                    raise bad("__metadata__ must map strings to strings")
                continue
            shown = repr(name[:200])
            if not isinstance(entry, dict):
                raise bad(f"tensor {shown} is not an object with dtype, shape and data_offsets")
            dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
                raise bad(f"tensor {shown} has dtype {str(dtype)[:20]!r}; LoRA weights are one of "
                          f"{', '.join(SAFETENSORS_DTYPES)}")
            if not isinstance(shape, list) or not 1 <= len(shape) <= 2 or not all(
                    _int(d) and 1 <= d <= MAX_TENSOR_DIM for d in shape):
                raise bad(f"tensor {shown} has shape {str(shape)[:60]}; LoRA weights are 1-D or 2-D, each "
                          f"dimension 1 to {MAX_TENSOR_DIM}")
            if not isinstance(offsets, list) or len(offsets) != 2 or not all(_int(o) for o in offsets) \
                    or not 0 <= offsets[0] <= offsets[1] <= data_size:
                raise bad(f"tensor {shown} has data_offsets {str(offsets)[:60]} outside the file's "
                          f"{data_size} bytes of data")
            needed = SAFETENSORS_DTYPES[dtype] * (shape[0] * (shape[1] if len(shape) == 2 else 1))
            if offsets[1] - offsets[0] != needed:
                raise bad(f"tensor {shown} spans {offsets[1] - offsets[0]} bytes, but {dtype} {shape} needs {needed}")
            spans.append((offsets[0], offsets[1], shown))
            for side, rank_axis in (("lora_A", 0), ("lora_B", 1)):  # A is (rank, in), B is (out, rank)
                if f".{side}." in name:
                    if len(shape) != 2:
                        raise bad(f"tensor {shown} is a {side} matrix but has shape {shape}")
                    ranks.setdefault(name.replace(f".{side}.", ".", 1), {})[side] = shape[rank_axis]
        at = 0
        for begin, end, shown in sorted(spans):
            if begin != at:
                raise bad(f"tensor {shown} does not start where the previous one ends (the data has gaps or "
                          "overlaps)")
            at = end
        if at != data_size:
            raise bad(f"{data_size - at} bytes of data follow the last tensor")
        for module, pair in ranks.items():
            if len(set(pair.values())) > 1:
                raise bad(f"lora_A and lora_B of {module[:200]!r} have different ranks "
                          f"({pair.get('lora_A')} and {pair.get('lora_B')})")
        return max((r for pair in ranks.values() for r in pair.values()), default=0)
    except (_BadSafetensors, struct.error) as err:
        raise invalid_adapter(f"{path.name} is not a valid safetensors file of LoRA weights: {err}.",
                              param) from None


def base_name(name_or_path: str) -> str:
    """``/models/SmolLM2-135M-Instruct/`` and ``HuggingFaceTB/SmolLM2-135M-Instruct`` name the same base."""
    return name_or_path.rstrip("/").rsplit("/", 1)[-1]


def base_config_sha256(models_dir: Path | None, base_model: str) -> str:
    """sha256 of the base model's config.json under ``models_dir``; "" when it is not there (or
    ``base_model`` is not a plain folder name)."""
    if models_dir is None or not plain_name(base_model):
        return ""
    path = models_dir / base_model / "config.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def check_compatible(*, base_model: str, adapter_base: str, lora_rank: int, target_modules: Iterable[str],
                     modules_to_save: Iterable[str] = (), base_models: list[str], max_lora_rank: int,
                     registered_config_sha256: str = "", current_config_sha256: str = "",
                     param: str = "file") -> None:
    """Refuse, saying which fact differs, an adapter the engines could not serve as ``base_model``."""
    if base_model not in base_models:
        raise incompatible(f"base model {base_model!r} is not served by the engines "
                           f"({', '.join(base_models)}).", "base_model")
    if adapter_base and base_name(adapter_base) != base_model:
        raise incompatible(f"it was trained on base model {base_name(adapter_base)!r}, not {base_model!r}.", param)
    if registered_config_sha256 and current_config_sha256 and registered_config_sha256 != current_config_sha256:
        raise incompatible(f"base model {base_model!r} changed since registration (config.json sha256 "
                           f"{registered_config_sha256[:12]}... then, {current_config_sha256[:12]}... now).", param)
    if lora_rank > max_lora_rank:
        raise incompatible(f"rank {lora_rank} exceeds the engines' max_lora_rank {max_lora_rank}.", param)
    unsupported = sorted({t.rsplit(".", 1)[-1] for t in target_modules} - SUPPORTED_TARGET_MODULES)
    if unsupported:
        raise incompatible(f"target modules {', '.join(unsupported)} are not supported by the engines "
                           f"(supported: {', '.join(sorted(SUPPORTED_TARGET_MODULES))}).", param)
    saved = sorted(set(modules_to_save))
    if saved:
        raise incompatible(f"modules_to_save ({', '.join(saved)}) needs full embedding/lm_head weights, "
                           "which the engines do not load.", param)
