"""What a PEFT LoRA adapter is (read from its own files) and whether the engines can serve it."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from coachforge_shared.errors import InvalidArgument

ADAPTER_CONFIG = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
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


def read_adapter(adapter_dir: Path, param: str = "file") -> AdapterFacts:
    """Read ``adapter_config.json`` and check the weights file is there and readable."""
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        raise InvalidArgument(f"The adapter has no {ADAPTER_CONFIG}.", param=param, code="invalid_adapter")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{ADAPTER_CONFIG} is not valid JSON: {err}", param=param,
                              code="invalid_adapter") from None
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
    weights = [adapter_dir / name for name in WEIGHT_FILES if (adapter_dir / name).is_file()]
    if not weights:
        raise InvalidArgument(f"The adapter has no weights ({' or '.join(WEIGHT_FILES)}).", param=param,
                              code="invalid_adapter")
    if weights[0].name.endswith(".safetensors"):
        _check_safetensors(weights[0], param)
    return AdapterFacts(base_model_name_or_path=str(config.get("base_model_name_or_path") or ""),
                        lora_rank=rank, target_modules=sorted({t.rsplit(".", 1)[-1] for t in targets}),
                        modules_to_save=[str(m) for m in to_save], peft_type=peft_type.upper())


def _check_safetensors(path: Path, param: str) -> None:
    """The header of a safetensors file: 8-byte little-endian length, then that much JSON."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > path.stat().st_size - 8:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{path.name} is not a readable safetensors file ({err}).", param=param,
                              code="invalid_adapter") from None


def base_name(name_or_path: str) -> str:
    """``/models/SmolLM2-135M-Instruct/`` and ``HuggingFaceTB/SmolLM2-135M-Instruct`` name the same base."""
    return name_or_path.rstrip("/").rsplit("/", 1)[-1]


def base_config_sha256(models_dir: Path | None, base_model: str) -> str:
    """sha256 of the base model's config.json under ``models_dir``; "" when it is not there."""
    if models_dir is None:
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
