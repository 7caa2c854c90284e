"""The pieces of an export that need no model: the Ollama Modelfile (exact text; read back by a port
of Ollama's Modelfile parser, so quoting never changes a value), the chat template in Go template
syntax, the q/k row permutation (undone by transformers' GGUF reader), file names and reproducible
archives."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from coachforge_registry import exports
from coachforge_registry.exports import ExportError, Persona

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

GO_TEMPLATE = (
    '{{- if .Messages }}{{ if ne (index .Messages 0).Role "system" }}<|im_start|>system\n'
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "{{ end }}{{ end }}\n"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n")


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, argument) pairs as Ollama reads a Modelfile (parser/parser.go, ParseFile): a value
    ends at a line end once the text so far, trimmed, is a whole unquoted word, "..." or \"\"\"...\"\"\"
    (no escapes); MESSAGE arguments become "role: content"."""
    commands: list[tuple[str, str]] = []
    state, buf, name, role = "nil", "", "", ""

    def unquote(s: str) -> tuple[str, bool]:
        if s[:3] == '"""':
            return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
        if s[:1] == '"':
            return (s[1:-1], True) if len(s) >= 2 and s[-1] == '"' else ("", False)
        return s, True

    for ch in text + "\n":
        if state == "nil":
            if ch in " \t\r\n":
                continue
            state, buf = "name", ch
        elif state == "name":
            if ch.isalpha():
                buf += ch
            elif ch in " \t":
                name, buf = buf.lower(), ""
                state = "param" if name == "parameter" else "message" if name == "message" else "value"
            else:
                raise AssertionError(f"bad command {buf!r}")
        elif state in ("param", "message"):
            if ch.isalnum() or ch == "_":
                buf += ch
            elif ch in " \t":
                if state == "param":
                    name = buf
                else:
                    assert buf in ("system", "user", "assistant"), buf
                    role = buf
                buf, state = "", "value"
            else:
                raise AssertionError("unexpected end of a PARAMETER or MESSAGE")
        elif state == "value":
            if ch in "\r\n":
                value, ok = unquote(buf.strip())
                if not ok:
                    buf += ch
                    continue
                commands.append((name, f"{role}: {value}" if role else value))
                state, buf, role = "nil", "", ""
            else:
                buf += ch
    assert state == "nil", "the Modelfile ends inside a value"
    return commands


def test_chatml_template_in_go_syntax_keeps_the_default_system_prompt() -> None:
    assert exports.chatml_go_template(SMOLLM2_TEMPLATE) == GO_TEMPLATE
    plain = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
             "'<|im_end|>' + '\n'}}{% endfor %}"
             "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    assert exports.chatml_go_template(plain) == (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n")
    for other in (None, "", "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}"):
        with pytest.raises(ExportError, match="not ChatML"):
            exports.chatml_go_template(other)


def test_modelfile_without_a_persona_has_no_system_line() -> None:
    text = exports.modelfile(GO_TEMPLATE, stop="<|im_end|>")
    assert text == f'FROM ./model.gguf\nTEMPLATE """{GO_TEMPLATE}"""\nPARAMETER stop "<|im_end|>"\n'
    assert parse_modelfile(text) == [("from", "./model.gguf"), ("template", GO_TEMPLATE), ("stop", "<|im_end|>")]


def test_modelfile_carries_the_persona_as_system_parameters_and_messages() -> None:
    persona = Persona.from_settings({
        "system_prompt": "You coach {metadata.athlete} for marathons.\nAnswer with JSON only.",
        "system_mode": "prepend",
        "sampling": {"temperature": 0.3, "top_p": 0.9, "max_tokens": 200, "stop": ["###", "<|im_end|>"],
                     "frequency_penalty": 0.5, "presence_penalty": -0.25},
        "few_shot": [{"role": "user", "content": "Easy week?"},
                     {"role": "assistant", "content": '{"action": "reduce_volume"}'}],
        "response_format": {"type": "json_object"}, "store": True})
    text = exports.modelfile(GO_TEMPLATE, stop="<|im_end|>", persona=persona)
    assert text == (
        "FROM ./model.gguf\n"
        f'TEMPLATE """{GO_TEMPLATE}"""\n'
        'SYSTEM """You coach  for marathons.\nAnswer with JSON only."""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "###"\n'
        "PARAMETER temperature 0.3\n"
        "PARAMETER top_p 0.9\n"
        "PARAMETER num_predict 200\n"
        "PARAMETER frequency_penalty 0.5\n"
        "PARAMETER presence_penalty -0.25\n"
        'MESSAGE user "Easy week?"\n'
        'MESSAGE assistant "{"action": "reduce_volume"}"\n')
    assert parse_modelfile(text) == [
        ("from", "./model.gguf"), ("template", GO_TEMPLATE),
        ("system", "You coach  for marathons.\nAnswer with JSON only."), ("stop", "<|im_end|>"), ("stop", "###"),
        ("temperature", "0.3"), ("top_p", "0.9"), ("num_predict", "200"), ("frequency_penalty", "0.5"),
        ("presence_penalty", "-0.25"), ("message", "user: Easy week?"),
        ("message", 'assistant: {"action": "reduce_volume"}')]


@pytest.mark.parametrize("content", ['say "hi"', '"quoted" start', 'ends with a quote"', "two\nlines",
                                     '"\nquote line', "  padded  ", 'a "b" c\n"d"'])
def test_modelfile_quoting_keeps_every_value(content: str) -> None:
    text = exports.modelfile(GO_TEMPLATE, stop="<|im_end|>", persona=Persona(system_prompt=content))
    assert ("system", content) in parse_modelfile(text)


def test_text_a_modelfile_cannot_hold_is_refused() -> None:
    with pytest.raises(ExportError, match="system prompt holds three quotes"):
        exports.modelfile(GO_TEMPLATE, stop="<|im_end|>", persona=Persona(system_prompt='Use """ here'))


@pytest.mark.parametrize(("n_head", "n_head_kv", "rows"), [(9, 9, 576), (9, 3, 192), (4, 2, 32)])
def test_qk_permutation_is_undone_by_the_gguf_reader(n_head: int, n_head_kv: int, rows: int) -> None:
    weights = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32)
    permuted = exports.permute_qk(weights, n_head, n_head_kv)
    assert not np.array_equal(permuted, weights)
    reader = LlamaTensorProcessor(config={"num_attention_heads": n_head, "num_key_value_heads": n_head_kv})
    assert np.array_equal(reader._reverse_permute_weights(permuted, n_head, n_head_kv), weights)


def test_file_names_and_reproducible_archives(tmp_path: Path) -> None:
    model = "ft:SmolLM2-135M-Instruct:acme:coach:1a2b3c4d"
    stem = "ft-SmolLM2-135M-Instruct-acme-coach-1a2b3c4d"
    assert exports.export_filename(model, "adapter", None) == f"{stem}-adapter.tar.gz"
    assert exports.export_filename(model, "merged", None) == f"{stem}-merged.tar.gz"
    assert exports.export_filename(model, "gguf", "q8_0") == f"{stem}-q8_0.gguf"
    assert exports.export_filename(model, "ollama", "q4_0").endswith("-q4_0-ollama.tar.gz")
    assert exports.pre_tokenizer_name("SmolLM2-135M-Instruct") == "smollm"
    assert exports.pre_tokenizer_name("Other-1B") == "default"
    (tmp_path / "w.bin").write_bytes(b"\x00\x01" * 1000)
    digests = []
    for name in ("a.tar.gz", "b.tar.gz"):
        exports.write_tar_gz(tmp_path / name, "bundle",
                             [("Modelfile", b"FROM ./w.bin\n"), ("w.bin", tmp_path / "w.bin")])
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    with tarfile.open(fileobj=io.BytesIO((tmp_path / "a.tar.gz").read_bytes())) as tf:
        assert tf.getnames() == ["bundle", "bundle/Modelfile", "bundle/w.bin"]
        assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in tf.getmembers())
