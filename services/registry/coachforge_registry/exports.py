"""Model exports: the files a user takes a fine-tuned model away in, made from the base model's
folder and the version's PEFT LoRA adapter. Pure functions of files (no database, no store):

* ``adapter``: the adapter as stored (``adapter_config.json`` + ``adapter_model.safetensors``), a tar.gz;
* ``merged``: base + adapter merged (PEFT ``merge_and_unload``), saved as safetensors with the
  tokenizer and its chat template, a tar.gz;
* ``gguf``: the merged model as one GGUF file (llama architecture, written with the ``gguf``
  library) in f16, q8_0 or q4_0;
* ``ollama``: a tar.gz holding that GGUF as ``model.gguf`` and a ``Modelfile`` (``FROM``, the chat
  template in Go template syntax, the avatar's persona as ``SYSTEM``/``PARAMETER``/``MESSAGE``).

Archives are reproducible: the same inputs give the same bytes (entries sorted, times and owners
zeroed), so an export's sha256 identifies its content. torch, transformers and peft are imported
only when a conversion runs.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import shutil
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMATS = ("adapter", "merged", "gguf", "ollama")
"""What a model can be exported as."""
QUANTIZATIONS = ("f16", "q8_0", "q4_0")
"""How the weights of a GGUF export are stored."""
QUANTIZED_FORMATS = ("gguf", "ollama")
"""The formats a quantization applies to (the others keep the weights as they are)."""
DEFAULT_QUANTIZATION = "f16"

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODELFILE = "Modelfile"
OLLAMA_GGUF = "model.gguf"
GZIP_LEVEL = 6
CHUNK = 1 << 20

PRE_TOKENIZERS = {"smollm": "smollm"}
"""llama.cpp's name of a base model family's pre-tokenizer (``tokenizer.ggml.pre``), by a word of the
base model's name (lower case); other byte-level BPE models get ``default``."""

METADATA_PLACEHOLDER = re.compile(r"\{metadata\.([A-Za-z0-9_]+)\}")
"""A ``{metadata.<key>}`` of a persona's system prompt (inference fills it from the request's
metadata; an exported model has none, so it becomes empty, as for a request without it)."""


class ExportError(Exception):
    """The model cannot be exported in the asked format (the message says why, without paths)."""


def export_filename(model_id: str, fmt: str, quantization: str | None) -> str:
    """The download's file name, e.g. ``ft-SmolLM2-135M-Instruct-acme-coach-1a2b3c4d-q8_0.gguf``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.") or "model"
    if fmt == "adapter":
        return f"{stem}-adapter.tar.gz"
    if fmt == "merged":
        return f"{stem}-merged.tar.gz"
    if fmt == "gguf":
        return f"{stem}-{quantization}.gguf"
    return f"{stem}-{quantization}-ollama.tar.gz"


def folder_name(filename: str) -> str:
    """The top-level folder inside an archive: its file name without the extensions."""
    for ext in (".tar.gz", ".gguf"):
        if filename.endswith(ext):
            return filename[: -len(ext)]
    return filename


# -- archives ------------------------------------------------------------------------------------

def write_tar_gz(out: Path, folder: str, files: Sequence[tuple[str, Path | bytes]],
                 level: int = GZIP_LEVEL) -> None:
    """A tar.gz of ``files`` (name in the archive, a local file or bytes) under one top-level
    ``folder``, in the order given; times, owners and the gzip header's time are zeroed so that the
    same files give the same archive."""
    with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                              compresslevel=level) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tf:
        folder_info = tarfile.TarInfo(folder)
        folder_info.type, folder_info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(folder_info)
        for name, content in files:
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.mode = 0o644
            if isinstance(content, bytes):
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
            else:
                info.size = content.stat().st_size
                with content.open("rb") as f:
                    tf.addfile(info, f)


def adapter_archive(adapter_dir: Path, out: Path, *, folder: str, base_model: str) -> None:
    """The adapter's two files as a tar.gz. The weights are the stored bytes; in
    ``adapter_config.json`` ``base_model_name_or_path`` is set to the base model's name (a trainer
    writes the path of the base on its own disk, which means nothing elsewhere and is not shown)."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_model
    files: list[tuple[str, Path | bytes]] = [
        ("adapter_config.json", (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()),
        ("adapter_model.safetensors", adapter_dir / "adapter_model.safetensors")]
    write_tar_gz(out, folder, files)


def folder_archive(src: Path, out: Path, *, folder: str, level: int = GZIP_LEVEL) -> None:
    """Every regular file of ``src`` (sorted, no links) as a tar.gz under ``folder``."""
    files: list[tuple[str, Path | bytes]] = [
        (p.relative_to(src).as_posix(), p) for p in sorted(src.rglob("*")) if p.is_file() and not p.is_symlink()]
    write_tar_gz(out, folder, files, level=level)


# -- merged --------------------------------------------------------------------------------------

def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Base + adapter merged into plain weights (PEFT ``merge_and_unload``) in the base's dtype,
    saved as safetensors with the base's tokenizer (its chat template included) and generation
    settings: a folder transformers, vLLM or llama.cpp's converter load as an ordinary model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)  # merging draws no random numbers; loading may initialise what it then replaces
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.name_or_path = ""
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(base_dir)).save_pretrained(str(out_dir))
    _drop_local_paths(out_dir)
    del merged, base


def _drop_local_paths(model_dir: Path) -> None:
    """Remove ``_name_or_path`` keys (a server folder) from the saved JSON files."""
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        path = model_dir / name
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and ("_name_or_path" in data or "name_or_path" in data):
                data.pop("_name_or_path", None)
                data.pop("name_or_path", None)
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# -- GGUF ----------------------------------------------------------------------------------------

@dataclass
class Vocab:
    """A byte-level BPE vocabulary as GGUF stores it."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]
    add_bos: bool
    chat_template: str | None


def read_vocab(model_dir: Path, vocab_size: int) -> Vocab:
    """The tokenizer of an HF folder (``tokenizer.json``, ``tokenizer_config.json``, the chat
    template) as GGUF metadata, the way llama.cpp's converter writes a GPT-2 style BPE: every id up
    to the model's vocabulary size (``[PAD<id>]``, unused, where the tokenizer has none), added
    special tokens as control tokens, other added tokens as user-defined, merges, special token ids
    (``gguf.SpecialVocab``) and the chat template."""
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ExportError("The base model has no tokenizer.json; only byte-level BPE tokenizers can be exported "
                          "to GGUF.")
    data = json.loads(path.read_text(encoding="utf-8"))
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(data.get("pre_tokenizer")):
        raise ExportError("Only byte-level BPE tokenizers (GPT-2 style) can be exported to GGUF.")
    by_id: dict[int, str] = {int(i): str(t) for t, i in (model.get("vocab") or {}).items()}
    added = {int(a["id"]): a for a in data.get("added_tokens") or []}
    for i, a in added.items():
        by_id[i] = str(a["content"])
    if by_id and max(by_id) >= vocab_size:
        raise ExportError(f"The tokenizer has ids beyond the model's vocabulary size ({vocab_size}).")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
        elif i in added:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED))
        else:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.NORMAL))
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise ExportError("The tokenizer has no BPE merges.")
    chat_template = special.chat_template if isinstance(special.chat_template, str) else None
    return Vocab(tokens=tokens, token_types=types, merges=list(special.merges),
                 special_ids=dict(special.special_token_ids),
                 add_bos=bool(special.add_special_token.get("bos", False)), chat_template=chat_template)


def _byte_level(pre_tokenizer: Any) -> bool:
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "ByteLevel":
        return True
    return any(_byte_level(p) for p in pre_tokenizer.get("pretokenizers") or [])


def pre_tokenizer_name(base_model: str) -> str:
    """llama.cpp's pre-tokenizer name for the base model (:data:`PRE_TOKENIZERS`, else ``default``)."""
    lowered = base_model.lower()
    return next((name for word, name in PRE_TOKENIZERS.items() if word in lowered), "default")


def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Reorder the rows of a q_proj (``n_head``) or k_proj (``n_head_kv``) weight from the
    Hugging Face layout of rotary halves to llama.cpp's interleaved pairs (its converter does the
    same for llama; a GGUF reader undoes it)."""
    heads = n_head_kv if n_head_kv is not None and n_head_kv != n_head else n_head
    rows = weights.shape[0]
    if rows % (heads * 2):
        raise ExportError(f"A projection of {rows} rows cannot be split into {heads} rotary heads.")
    return (weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


@dataclass
class LlamaShape:
    """The hyperparameters of a llama model's config.json a GGUF needs."""

    n_layers: int
    n_head: int
    n_head_kv: int
    hidden: int
    intermediate: int
    head_dim: int
    context: int
    rms_eps: float
    rope_theta: float
    vocab_size: int
    tied: bool
    extra: dict[str, Any] = field(default_factory=dict)


def llama_shape(config: Mapping[str, Any]) -> LlamaShape:
    """Read and check the llama hyperparameters (only plain rotary embeddings are written)."""
    if config.get("model_type") != "llama":
        raise ExportError(f"Only llama models can be exported to GGUF (this one is {config.get('model_type')!r}).")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type != "default":
        raise ExportError(f"Rotary scaling {rope_type!r} is not supported by the GGUF export.")
    n_head = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    return LlamaShape(
        n_layers=int(config["num_hidden_layers"]), n_head=n_head,
        n_head_kv=int(config.get("num_key_value_heads") or n_head), hidden=hidden,
        intermediate=int(config["intermediate_size"]), head_dim=int(config.get("head_dim") or hidden // n_head),
        context=int(config.get("max_position_embeddings") or 2048), rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta") or config.get("rope_theta") or 10000.0),
        vocab_size=int(config["vocab_size"]), tied=bool(config.get("tie_word_embeddings", False)))


def _tensors(model_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Every tensor of the folder's safetensors files as float32 numpy (bf16 included), by name."""
    import torch
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ExportError("The merged model has no safetensors weights.")
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name).to(torch.float32).numpy()


def _weight_type(gguf_name: str, data: np.ndarray, quantization: str) -> Any:
    """How one tensor is stored: 1-D ones (norms) in F32; matrices in F16, Q8_0 or Q4_0 (for
    q4_0 the token embedding and output stay Q8_0, as llama.cpp keeps them at a higher precision);
    a matrix whose rows do not fill whole blocks falls back to F16."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if data.ndim < 2:
        return GGMLQuantizationType.F32
    wanted = {"f16": GGMLQuantizationType.F16, "q8_0": GGMLQuantizationType.Q8_0,
              "q4_0": GGMLQuantizationType.Q4_0}[quantization]
    if wanted == GGMLQuantizationType.Q4_0 and gguf_name in ("token_embd.weight", "output.weight"):
        wanted = GGMLQuantizationType.Q8_0
    block = GGML_QUANT_SIZES[wanted][0]
    return wanted if data.shape[-1] % block == 0 else GGMLQuantizationType.F16


def write_gguf(model_dir: Path, out: Path, quantization: str, *, name: str, pre_tokenizer: str = "default") -> None:
    """The HF llama model of ``model_dir`` (merged weights + tokenizer) as one GGUF file: llama
    architecture metadata, the vocabulary (:func:`read_vocab`), and the weights under llama.cpp's
    tensor names (``gguf.get_tensor_name_map``) with q_proj/k_proj rows permuted
    (:func:`permute_qk`), stored per :func:`_weight_type`."""
    import gguf
    from gguf.quants import quantize

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"Unknown quantization {quantization!r}.")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    shape = llama_shape(config)
    vocab = read_vocab(model_dir, shape.vocab_size)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[quantization]
    arch = gguf.MODEL_ARCH.LLAMA
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_vocab_size(shape.vocab_size)
        writer.add_context_length(shape.context)
        writer.add_embedding_length(shape.hidden)
        writer.add_block_count(shape.n_layers)
        writer.add_feed_forward_length(shape.intermediate)
        writer.add_head_count(shape.n_head)
        writer.add_head_count_kv(shape.n_head_kv)
        writer.add_layer_norm_rms_eps(shape.rms_eps)
        writer.add_rope_freq_base(shape.rope_theta)
        writer.add_rope_dimension_count(shape.head_dim)
        if shape.head_dim != shape.hidden // shape.n_head:
            writer.add_key_length(shape.head_dim)
            writer.add_value_length(shape.head_dim)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre_tokenizer)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types(vocab.token_types)
        writer.add_token_merges(vocab.merges)
        for kind, token_id in vocab.special_ids.items():
            adder = getattr(writer, f"add_{kind}_token_id", None)
            if adder is not None:
                adder(token_id)
        writer.add_add_bos_token(vocab.add_bos)
        writer.add_add_space_prefix(False)
        if vocab.chat_template:
            writer.add_chat_template(vocab.chat_template)

        names = gguf.get_tensor_name_map(arch, shape.n_layers)
        written: set[str] = set()
        for hf_name, data in _tensors(model_dir):
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            if hf_name == "lm_head.weight" and shape.tied:
                continue
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise ExportError(f"The weight {hf_name!r} has no GGUF name for the llama architecture.")
            if hf_name.endswith("q_proj.weight"):
                data = permute_qk(data, shape.n_head, shape.n_head)
            elif hf_name.endswith("k_proj.weight"):
                data = permute_qk(data, shape.n_head, shape.n_head_kv)
            qtype = _weight_type(gguf_name, data, quantization)
            stored = quantize(np.ascontiguousarray(data), qtype)
            writer.add_tensor(gguf_name, stored, raw_dtype=qtype if stored.dtype == np.uint8 else None)
            written.add(gguf_name)
        if "token_embd.weight" not in written:
            raise ExportError("The merged model has no token embedding.")

        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


# -- Ollama --------------------------------------------------------------------------------------

@dataclass
class Persona:
    """What an avatar's persona puts in a Modelfile."""

    system_prompt: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    few_shot: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Persona:
        """From a persona version's settings (as the registry keeps them)."""
        return cls(system_prompt=settings.get("system_prompt"), sampling=dict(settings.get("sampling") or {}),
                   few_shot=[{"role": str(t["role"]), "content": str(t["content"])}
                             for t in settings.get("few_shot") or []])


_SAMPLING_PARAMETERS = (("temperature", "temperature"), ("top_p", "top_p"), ("max_tokens", "num_predict"),
                        ("frequency_penalty", "frequency_penalty"), ("presence_penalty", "presence_penalty"))
"""Persona sampling field -> Ollama parameter, in the order they are written."""

_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", re.S)


def chatml_go_template(chat_template: str | None) -> str:
    """The Ollama (Go ``text/template``) form of a ChatML chat template (``<|im_start|>role\\n
    content<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``). A default system prompt
    the template adds when the conversation does not start with a system message is kept, under
    the same condition. Other templates are refused."""
    if not chat_template or "<|im_start|>" not in chat_template or "<|im_end|>" not in chat_template:
        raise ExportError("The model's chat template is not ChatML; only ChatML templates are converted for "
                          "Ollama.")
    default = _CHATML_DEFAULT_SYSTEM.search(chat_template)
    head = ""
    if default is not None:
        head = ('{{- if .Messages }}{{ if ne (index .Messages 0).Role "system" }}<|im_start|>system\n'
                f"{default.group(1)}<|im_end|>\n{{{{ end }}}}{{{{ end }}}}\n")
    return (f"{head}{{{{- range .Messages }}}}<|im_start|>{{{{ .Role }}}}\n"
            "{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")


def _quoted(text: str, what: str) -> str:
    """A Modelfile argument in quotes. Ollama's parser ends a value at the first line end where the
    text so far is a whole quoted string, and has no escapes: text of several lines, or starting
    with a quote, goes between triple quotes, other text between plain ones (inner quotes are kept
    as they are); text holding three quotes in a row cannot be written."""
    if '"""' in text:
        raise ExportError(f"The {what} holds three quotes in a row, which a Modelfile cannot contain.")
    if "\n" in text or "\r" in text or text.startswith('"'):
        return f'"""{text}"""'
    return f'"{text}"'


def _number(value: float | int) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def modelfile(template: str, *, stop: str, persona: Persona | None = None) -> str:
    """The Modelfile of an export: ``FROM ./model.gguf``, the chat ``TEMPLATE``, the persona's
    system prompt (``{metadata.<key>}`` emptied) as ``SYSTEM``, ``PARAMETER stop`` for the end of a
    turn, the persona's sampling defaults (temperature, top_p, max_tokens as num_predict, stop
    sequences, penalties) as ``PARAMETER`` lines and its few-shot turns as ``MESSAGE`` lines."""
    lines = [f"FROM ./{OLLAMA_GGUF}", f"TEMPLATE {_quoted(template, 'chat template')}"]
    persona = persona or Persona()
    if persona.system_prompt:
        system = METADATA_PLACEHOLDER.sub("", persona.system_prompt)
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    stops = [stop, *[s for s in persona.sampling.get("stop") or [] if s != stop]]
    lines.extend(f"PARAMETER stop {_quoted(s, 'stop sequence')}" for s in stops)
    for field_name, parameter in _SAMPLING_PARAMETERS:
        value = persona.sampling.get(field_name)
        if value is not None:
            lines.append(f"PARAMETER {parameter} {_number(value)}")
    lines.extend(f"MESSAGE {t['role']} {_quoted(t['content'], 'few-shot turn')}" for t in persona.few_shot)
    return "\n".join(lines) + "\n"


def end_of_turn(vocab_dir: Path) -> str:
    """The token that ends a turn: the tokenizer's eos token (``<|im_end|>`` for ChatML models)."""
    config = json.loads((vocab_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    eos = config.get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return str(eos or "<|im_end|>")


def chat_template_of(model_dir: Path) -> str | None:
    """The chat template saved with a tokenizer (``chat_template.jinja`` or tokenizer_config.json's)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    template = config.get("chat_template")
    return template if isinstance(template, str) else None


def ollama_archive(gguf_path: Path, modelfile_text: str, out: Path, *, folder: str) -> None:
    """``Modelfile`` and ``model.gguf`` in a tar.gz under ``folder`` (the GGUF barely compresses:
    the fastest gzip level)."""
    write_tar_gz(out, folder, [(MODELFILE, modelfile_text.encode("utf-8")), (OLLAMA_GGUF, gguf_path)], level=1)


# -- one export ----------------------------------------------------------------------------------

@dataclass
class ExportRequest:
    """Everything one export needs, as local files."""

    model_id: str
    base_model: str
    base_dir: Path
    adapter_dir: Path
    format: str
    quantization: str | None = None
    persona: Persona | None = None


def produce(req: ExportRequest, work_dir: Path) -> Path:
    """Make the export's file in ``work_dir`` (an empty folder of the caller's, removed by it) and
    return its path."""
    if req.format not in FORMATS:
        raise ExportError(f"Unknown export format {req.format!r}.")
    filename = export_filename(req.model_id, req.format, req.quantization)
    folder = folder_name(filename)
    out = work_dir / filename
    if req.format == "adapter":
        adapter_archive(req.adapter_dir, out, folder=folder, base_model=req.base_model)
        return out
    text = ""
    if req.format == "ollama":  # refused before the long conversion when the template or persona cannot be written
        text = modelfile(chatml_go_template(chat_template_of(req.base_dir)), stop=end_of_turn(req.base_dir),
                         persona=req.persona)
    merged = work_dir / "merged"
    merge_adapter(req.base_dir, req.adapter_dir, merged)
    if req.format == "merged":  # float weights barely compress: the fastest gzip level
        folder_archive(merged, out, folder=folder, level=1)
        return out
    quantization = req.quantization or DEFAULT_QUANTIZATION
    gguf_path = out if req.format == "gguf" else work_dir / OLLAMA_GGUF
    write_gguf(merged, gguf_path, quantization, name=req.model_id, pre_tokenizer=pre_tokenizer_name(req.base_model))
    if req.format == "ollama":
        ollama_archive(gguf_path, text, out, folder=folder)
    shutil.rmtree(merged, ignore_errors=True)
    return out
