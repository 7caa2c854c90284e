"""OpenAI's ``method`` on fine-tuning jobs, the ``backend`` choice, and the LoRA shape a continued
training inherits from its parent model (or refuses): the checks a create request meets before any
other service is asked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from coachforge_shared.errors import InvalidArgument
from coachforge_trainer.backends import BACKENDS, get_backend, unsloth_available
from coachforge_trainer.schemas import CreateJobRequest, DpoHyperparameters, Hyperparameters
from coachforge_trainer.settings import TrainerSettings
from coachforge_trainer.spec import MethodSettings, ParentAdapter, continue_from


def request(**body: Any) -> CreateJobRequest:
    return CreateJobRequest.model_validate({"model": "SmolLM2-135M-Instruct", "training_file": "file-x", **body})


def refused(call: Any) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as err:
        call()
    return err.value


# -- method ---------------------------------------------------------------------------------------

def test_method_hyperparameters_are_the_job_s() -> None:
    req = request(method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "lora_r": 8}}})
    hp = req.resolved_hyperparameters()
    assert (hp.n_epochs, hp.lora_r, hp.batch_size) == (2, 8, "auto")
    assert req.method_type == "supervised"
    assert req.hyperparameters_param() == "method.supervised.hyperparameters"


def test_without_method_the_top_level_hyperparameters_are_used() -> None:
    req = request(hyperparameters={"n_epochs": 4})
    assert req.resolved_hyperparameters().n_epochs == 4
    assert (req.method_type, req.hyperparameters_param()) == ("supervised", "hyperparameters")
    assert request().resolved_hyperparameters() == Hyperparameters()


def test_top_level_and_method_hyperparameters_merge_when_they_agree() -> None:
    req = request(hyperparameters={"n_epochs": 2, "batch_size": 4},
                  method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "lora_r": 8}}})
    hp = req.resolved_hyperparameters()
    assert (hp.n_epochs, hp.batch_size, hp.lora_r) == (2, 4, 8)


def test_conflicting_top_level_and_method_hyperparameters_are_a_400_on_the_top_level_one() -> None:
    req = request(hyperparameters={"n_epochs": 3},
                  method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}})
    err = refused(req.resolved_hyperparameters)
    assert err.param == "hyperparameters.n_epochs" and err.code == "conflicting_hyperparameters"
    assert "method.supervised.hyperparameters.n_epochs=2" in err.message


def test_a_method_with_another_type_s_settings_is_refused() -> None:
    req = request(method={"type": "supervised", "dpo": {"hyperparameters": {"beta": 0.1}}})
    err = refused(req.check_method)
    assert (err.param, err.code) == ("method.dpo", "invalid_method")
    request(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}).check_method()


def test_dpo_hyperparameters_carry_beta_and_take_the_top_level_ones() -> None:
    req = request(hyperparameters={"n_epochs": 1}, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}})
    hp = req.resolved_hyperparameters()
    assert isinstance(hp, DpoHyperparameters) and (hp.beta, hp.n_epochs) == (0.2, 1)
    assert req.hyperparameters_param() == "method.dpo.hyperparameters"
    assert isinstance(request(method={"type": "dpo"}).resolved_hyperparameters(), DpoHyperparameters)


@pytest.mark.parametrize("method", [{"type": "ppo"}, {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}},
                                    {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}])
def test_malformed_methods_fail_validation(method: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        request(method=method)


# -- backend --------------------------------------------------------------------------------------

def test_the_default_backend_is_trl_and_trains_supervised_jobs() -> None:
    assert request().backend == "trl"
    get_backend("trl").check(TrainerSettings(), "supervised")


def test_methods_not_trained_yet_are_a_400_on_method_type() -> None:
    err = refused(lambda: get_backend("trl").check(TrainerSettings(), "reinforcement"))
    assert (err.param, err.code) == ("method.type", "unsupported_method")
    assert "'reinforcement'" in err.message and "'supervised' or 'dpo'" in err.message


def test_trl_trains_dpo_and_unsloth_does_not() -> None:
    get_backend("trl").check(TrainerSettings(), "dpo")
    err = refused(lambda: get_backend("unsloth").check(TrainerSettings(device_class="cuda", unsloth_installed=True),
                                                       "dpo"))
    assert (err.param, err.code) == ("method.type", "unsupported_method")


def test_dpo_beta_is_stored_with_the_job_and_auto_is_the_default() -> None:
    settings = TrainerSettings()
    auto = MethodSettings.resolve(settings, request(method={"type": "dpo"}).resolved_hyperparameters())
    assert auto.beta == settings.dpo_beta == 0.1
    given = request(method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}).resolved_hyperparameters()
    method = MethodSettings.resolve(settings, given)
    assert method.beta == 0.3 and json.loads(method.as_json())["beta"] == 0.3
    supervised = MethodSettings.resolve(settings, request().resolved_hyperparameters())
    assert supervised.beta is None and "beta" not in json.loads(supervised.as_json())


def test_an_unknown_backend_is_a_400_naming_the_known_ones() -> None:
    err = refused(lambda: get_backend("axolotl"))
    assert (err.param, err.code) == ("backend", "invalid_backend")
    assert all(name in err.message for name in BACKENDS)


def test_unsloth_needs_cuda_workers() -> None:
    err = refused(lambda: get_backend("unsloth").check(TrainerSettings(unsloth_installed=True), "supervised"))
    assert (err.param, err.code) == ("backend", "backend_unavailable")
    assert "CUDA" in err.message and "'cpu'" in err.message


def test_unsloth_needs_to_be_installed_on_the_workers() -> None:
    settings = TrainerSettings(device_class="cuda", unsloth_installed=False)
    err = refused(lambda: get_backend("unsloth").check(settings, "supervised"))
    assert err.param == "backend" and "not installed" in err.message
    get_backend("unsloth").check(TrainerSettings(device_class="cuda", unsloth_installed=True), "supervised")


def test_unsloth_installed_unset_looks_in_this_environment() -> None:
    import importlib.util

    assert unsloth_available(TrainerSettings()) == (importlib.util.find_spec("unsloth") is not None)


def test_the_openai_compatible_backend_is_not_configured() -> None:
    err = refused(lambda: get_backend("openai_compatible").check(TrainerSettings(device_class="cuda"), "supervised"))
    assert err.param == "backend" and "not configured for this tenant" in err.message


# -- continued training: the parent's LoRA shape ---------------------------------------------------

PARENT = ParentAdapter(model_id="ft:base:acme:coach:1", base_model="base", lora_r=8, lora_alpha=16,
                       target_modules=["q_proj", "v_proj"], all_linear=False)


def _continue(parent: ParentAdapter = PARENT, **hp: Any) -> MethodSettings:
    given = Hyperparameters.model_validate(hp)
    return continue_from(parent, MethodSettings.resolve(TrainerSettings(), given), given)


def test_unspecified_lora_settings_are_inherited_from_the_parent() -> None:
    method = _continue(lora_dropout=0.1, max_length=256)
    assert (method.lora_r, method.lora_alpha, method.target_modules) == (8, 16, ["q_proj", "v_proj"])
    assert (method.lora_dropout, method.max_length) == (0.1, 256)  # the job's own


def test_the_parent_s_own_values_given_explicitly_are_accepted() -> None:
    method = _continue(lora_r=8, lora_alpha=16, target_modules=["v_proj", "q_proj"])
    assert (method.lora_r, method.lora_alpha) == (8, 16)


@pytest.mark.parametrize(("hp", "param"), [({"lora_r": 16}, "hyperparameters.lora_r"),
                                           ({"lora_alpha": 32}, "hyperparameters.lora_alpha"),
                                           ({"target_modules": ["q_proj"]}, "hyperparameters.target_modules"),
                                           ({"target_modules": "all-linear"}, "hyperparameters.target_modules")])
def test_a_different_lora_shape_is_refused(hp: dict[str, Any], param: str) -> None:
    err = refused(lambda: _continue(**hp))
    assert (err.param, err.code) == (param, "incompatible_parent_model")
    assert PARENT.model_id in err.message and "inherit" in err.message


def test_the_param_names_where_the_hyperparameters_were_given() -> None:
    given = Hyperparameters(lora_r=4)
    err = refused(lambda: continue_from(PARENT, MethodSettings.resolve(TrainerSettings(), given), given,
                                        "method.supervised.hyperparameters"))
    assert err.param == "method.supervised.hyperparameters.lora_r"


def test_all_linear_matches_a_parent_trained_on_all_linear_layers() -> None:
    parent = ParentAdapter.from_registry(
        "ft:base:acme::2", "base", 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        '{"hyperparameters": {"lora_alpha": 32, "target_modules": "all-linear", "lora_r": 16}}')
    assert (parent.lora_alpha, parent.all_linear) == (32, True)
    method = _continue(parent, target_modules="all-linear")
    assert method.target_modules == sorted(parent.target_modules)


def test_a_parent_of_unknown_alpha_keeps_its_own() -> None:
    uploaded = ParentAdapter.from_registry("ft:base:acme::3", "base", 8, ["v_proj", "q_proj"],
                                           '{"uploaded_by": "api-key:1", "files": []}')
    assert (uploaded.lora_alpha, uploaded.target_modules, uploaded.all_linear) == (None, ["q_proj", "v_proj"], False)
    assert _continue(uploaded).lora_alpha is None  # the adapter's own alpha is used when it is loaded
    assert _continue(uploaded, lora_alpha=64).lora_alpha == 64  # checked against the adapter by the worker
    assert ParentAdapter.from_registry("m", "base", 8, [], "not json").lora_alpha is None


# -- gRPC -----------------------------------------------------------------------------------------

def test_grpc_requests_carry_method_and_backend_and_jobs_report_them() -> None:
    from coachforge.trainer.v1 import trainer_pb2
    from coachforge_shared.ids import utcnow
    from coachforge_trainer.grpc import _body, to_proto
    from coachforge_trainer.models import Job

    body = _body(trainer_pb2.CreateJobRequest(model="ft:base:acme::1", training_file="file-x", method="dpo",
                                              backend="unsloth"))
    assert (body.method_type, body.backend, body.model) == ("dpo", "unsloth", "ft:base:acme::1")
    plain = _body(trainer_pb2.CreateJobRequest(model="base", training_file="file-x"))
    assert (plain.method, plain.method_type, plain.backend) == (None, "supervised", "trl")
    err = refused(lambda: _body(trainer_pb2.CreateJobRequest(model="base", training_file="file-x", method="ppo")))
    assert err.param == "method.type"

    job = Job(id="ftjob-1", tenant_id="acme", model="base", parent_model="ft:base:acme::1", method_type="supervised",
              backend="trl", status="queued", training_file="file-x", n_epochs=1, batch_size=1,
              learning_rate_multiplier=1.0, seed=1, method_json="{}", created_at=utcnow())
    shown = to_proto(job)
    assert (shown.model, shown.parent_model, shown.method, shown.backend) == ("base", "ft:base:acme::1",
                                                                              "supervised", "trl")


# -- the training data each method needs ------------------------------------------------------------

def test_dpo_refuses_chat_data_and_supervised_refuses_preference_pairs() -> None:
    from coachforge_trainer.service import _check_format

    _check_format("dpo", "file-p", "preference", "training_file")
    _check_format("supervised", "file-c", "chat", "training_file")
    _check_format("supervised", "dsv-1", "chat", "training_file")
    for method, item, found, wanted in (("dpo", "file-c", "chat", "preference pairs"),
                                        ("supervised", "file-p", "preference", "chat conversations"),
                                        ("dpo", "dsv-1", "chat", "upload a preference file")):
        err = refused(lambda: _check_format(method, item, found, "training_file"))  # noqa: B023
        assert (err.param, err.code) == ("training_file", "invalid_training_file_format")
        assert item in err.message and wanted in err.message
    err = refused(lambda: _check_format("dpo", "file-c", "chat", "validation_file"))
    assert (err.param, err.code) == ("validation_file", "invalid_validation_file_format")
