"""Job estimates (tokens, steps, device throughput, price table) and hyperparameter presets."""

from __future__ import annotations

import pytest

from coachforge_shared.errors import InvalidArgument
from coachforge_trainer.schemas import CreateJobRequest
from coachforge_trainer.service import estimate, resolve_preset
from coachforge_trainer.settings import TrainerSettings


def request(**body: object) -> CreateJobRequest:
    return CreateJobRequest.model_validate({"model": "SmolLM2-135M-Instruct", "training_file": "file-x", **body})


def test_cpu_estimate_uses_the_device_throughput_and_the_fallback_price() -> None:
    est = estimate(TrainerSettings(), "SmolLM2-135M-Instruct", tokens_per_epoch=3000, epochs=3, usable=21,
                   batch_size=4)
    assert est == {"tokens_per_epoch": 3000, "epochs": 3, "total_tokens": 9000, "steps": 6 * 3, "device": "cpu",
                   "tokens_per_second": 150.0, "seconds": 60.0, "cost_usd": 0.027, "price_per_million_tokens": 3.0}


def test_gpu_workers_use_their_throughput_and_the_model_s_price() -> None:
    settings = TrainerSettings(device_class="cuda", price_table={"SmolLM2-135M-Instruct": {"cuda": 8.0}})
    est = estimate(settings, "SmolLM2-135M-Instruct", tokens_per_epoch=1_500_000, epochs=2, usable=64, batch_size=16)
    assert (est["device"], est["tokens_per_second"], est["seconds"]) == ("cuda", 3000.0, 1000.0)
    assert (est["price_per_million_tokens"], est["cost_usd"], est["steps"]) == (8.0, 24.0, 8)
    other = estimate(settings, "another-base", tokens_per_epoch=1_000_000, epochs=1, usable=1, batch_size=1)
    assert other["price_per_million_tokens"] == 3.0  # a model missing from the table: price_per_million_tokens


def test_a_device_without_a_throughput_falls_back_to_estimated_tokens_per_second() -> None:
    settings = TrainerSettings(device_class="npu", tokens_per_second={"cpu": 150.0}, estimated_tokens_per_second=50)
    assert estimate(settings, "m", 500, 1, 10, 8)["seconds"] == 10.0


def test_without_a_preset_the_request_is_unchanged() -> None:
    hp, warnings = resolve_preset(TrainerSettings(), request(hyperparameters={"n_epochs": 2}))
    assert (hp.n_epochs, hp.batch_size, hp.lora_r, warnings) == (2, "auto", "auto", [])


@pytest.mark.parametrize(("preset", "epochs", "rank"), [("quick", 1, 16), ("balanced", 3, 16)])
def test_presets_fill_the_hyperparameters(preset: str, epochs: int, rank: int) -> None:
    hp, warnings = resolve_preset(TrainerSettings(), request(preset=preset))
    assert (hp.n_epochs, hp.batch_size, hp.learning_rate_multiplier, hp.lora_r) == (epochs, 4, 2.0, rank)
    assert warnings == []


def test_cpu_balanced_is_the_demo_recipe() -> None:
    """The CPU presets train as the demo does (bench/demo_defaults.py measured it on the demo's data)."""
    from coachforge_launcher import demo

    s = TrainerSettings()
    balanced = s.presets["cpu"]["balanced"]
    assert (balanced["batch_size"], balanced["lora_r"]) == (demo.BATCH_SIZE, demo.LORA_R)
    assert balanced["learning_rate_multiplier"] == demo.LEARNING_RATE_MULTIPLIER


def test_explicit_hyperparameters_win_over_the_preset() -> None:
    hp, _ = resolve_preset(TrainerSettings(), request(preset="quick", hyperparameters={"n_epochs": 4,
                                                                                       "lora_r": 8}))
    assert (hp.n_epochs, hp.lora_r, hp.batch_size) == (4, 8, 4)
    hp, _ = resolve_preset(TrainerSettings(), request(preset="quick", method={
        "type": "supervised", "supervised": {"hyperparameters": {"batch_size": 2}}}))
    assert (hp.n_epochs, hp.batch_size) == (1, 2)


def test_thorough_rank_is_capped_at_what_the_engines_serve() -> None:
    hp, warnings = resolve_preset(TrainerSettings(), request(preset="thorough"))
    assert (hp.n_epochs, hp.lora_r) == (5, 16)
    assert warnings and "lora_r 32" in warnings[0] and "at most 16" in warnings[0]
    hp, warnings = resolve_preset(TrainerSettings(max_lora_rank=64), request(preset="thorough"))
    assert (hp.lora_r, warnings) == (32, [])


def test_presets_follow_the_device_class() -> None:
    hp, _ = resolve_preset(TrainerSettings(device_class="cuda"), request(preset="balanced"))
    assert (hp.batch_size, hp.learning_rate_multiplier) == (16, 2.0)


def test_unknown_preset_is_a_400_on_preset() -> None:
    with pytest.raises(InvalidArgument) as err:
        resolve_preset(TrainerSettings(), request(preset="ludicrous"))
    assert err.value.param == "preset" and "quick" in err.value.message


def test_presets_table_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COACHFORGE_TRAINER_PRESETS", '{"cpu": {"tiny": {"n_epochs": 2, "lora_r": 4}}}')
    monkeypatch.setenv("COACHFORGE_TRAINER_TOKENS_PER_SECOND", '{"cpu": 75}')
    settings = TrainerSettings()
    hp, _ = resolve_preset(settings, request(preset="tiny"))
    assert (hp.n_epochs, hp.lora_r, hp.batch_size) == (2, 4, "auto")
    assert estimate(settings, "m", 150, 1, 1, 1)["seconds"] == 2.0
