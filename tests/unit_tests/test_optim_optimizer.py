"""The optimizer base protocol through TGD: argument validation, parameter groups,
zero_grad, step(closure), async and in-loop stepping, and JSON state dicts."""

from __future__ import annotations

import asyncio
import json

import pytest

from afnio_langchain import Variable, is_grad_enabled, no_grad
from afnio_langchain.optim import TGD, Optimizer, StepReport
from afnio_langchain.testing import ScriptedChatModel


def param(value="You are a helpful assistant.", role="system prompt") -> Variable:
    return Variable(value, role=role, requires_grad=True)


def feedback(p: Variable, *texts: str) -> None:
    p.grad = [Variable(t, role=f"feedback to {p.role}") for t in texts]


@pytest.fixture
def model() -> ScriptedChatModel:
    return ScriptedChatModel(optimizer=["value one", "value two", "value three", "value four"])


# ------------------------------------------------------------------------- validation


def test_bad_params_raise_clear_errors(model):
    with pytest.raises(ValueError, match="empty parameter list"):
        TGD([], model=model)
    with pytest.raises(TypeError, match="single Variable"):
        TGD(param(), model=model)
    with pytest.raises(TypeError, match="parameter 1 is a str"):
        TGD([param(), "text"], model=model)
    with pytest.raises(ValueError, match="does not require grad"):
        TGD([Variable("fixed", role="input")], model=model)
    with pytest.raises(TypeError, match="not a set"):
        TGD({param()}, model=model)
    p = param()
    with pytest.raises(ValueError, match="appears twice"):
        TGD([p, p], model=model)
    with pytest.raises(ValueError, match="more than one parameter group"):
        TGD([{"params": [p]}, {"params": [p]}], model=model)
    with pytest.raises(TypeError, match="not a mix"):
        TGD([p, {"params": [param()]}], model=model)
    with pytest.raises(ValueError, match="'params' key"):
        TGD([{"momentum": 1}], model=model)
    with pytest.raises(ValueError, match="empty 'params'"):
        TGD([{"params": []}], model=model)


def test_non_leaf_parameters_are_refused(model):
    x = param("a")
    y = x + Variable("b")
    assert not y.is_leaf
    with pytest.raises(ValueError, match="non-leaf"):
        TGD([y], model=model)


def test_bad_model_and_options_raise_clear_errors(model):
    with pytest.raises(TypeError, match="needs a model"):
        TGD([param()])
    with pytest.raises(TypeError, match="TGD model: expected a LangChain chat model"):
        TGD([param()], model="gpt-4o")
    with pytest.raises(ValueError, match="momentum must be >= 0"):
        TGD([param()], model=model, momentum=-1)
    with pytest.raises(TypeError, match="momentum must be an int"):
        TGD([param()], model=model, momentum=1.5)
    with pytest.raises(TypeError, match="constraint 1 must be a str"):
        TGD([param()], model=model, constraints=["ok", 3])
    with pytest.raises(ValueError, match="max_proposals must be >= 1"):
        TGD([param()], model=model, max_proposals=0)
    with pytest.raises(ValueError, match="condense_threshold"):
        TGD([{"params": [param()], "condense_threshold": 0}], model=model)


def test_any_langchain_chat_model_and_model_clients_are_accepted():
    from langchain_core.language_models import FakeListChatModel

    from afnio_langchain.models import as_model_client

    chat = FakeListChatModel(responses=['{"improved_value": "from a plain LangChain model"}'])
    p = param("old")
    feedback(p, "change")
    optimizer = TGD([p], model=chat)
    assert optimizer.param_groups[0]["model"].model is as_model_client(chat).model
    optimizer.step()
    assert p.data == "from a plain LangChain model"
    client = as_model_client(chat)
    assert TGD([param()], model=client).param_groups[0]["model"] is client


# ----------------------------------------------------------------------------- groups


def test_param_groups_hold_options_and_defaults(model):
    a, b, c = param("a", "first"), param("b", "second"), param("c", "third")
    optimizer = TGD(
        [{"params": [a]}, {"params": [b], "momentum": 3, "constraints": "Be polite."}],
        model=model,
        momentum=1,
        constraints=["Stay short."],
        temperature=0.2,
    )
    g0, g1 = optimizer.param_groups
    assert g0["params"] == [a] and g0["momentum"] == 1 and g0["constraints"] == ["Stay short."]
    assert g1["momentum"] == 3 and g1["constraints"] == ["Be polite."]
    assert g0["completion_args"] == {"temperature": 0.2}
    optimizer.add_param_group({"params": c})
    assert [i for i, _, _ in optimizer.indexed_params()] == [0, 1, 2]
    assert optimizer.params == [a, b, c]
    assert "Parameter Group 2" in repr(optimizer)


def test_per_group_constraints_reach_the_request_and_completion_args_the_model():
    model = ScriptedChatModel(optimizer="new")
    a, b = param("a", "first"), param("b", "second")
    feedback(a, "x")
    feedback(b, "y")
    TGD(
        [{"params": [a], "constraints": ["RULE-A"]}, {"params": [b], "constraints": ["RULE-B"]}],
        model=model,
        temperature=0.3,
    ).step()
    by_role = {("first" if 'role="first"' in c.text else "second"): c for c in model.calls}
    assert "RULE-A" in by_role["first"].text and "RULE-B" not in by_role["first"].text
    assert "RULE-B" in by_role["second"].text
    assert all(c.kwargs.get("temperature") == 0.3 for c in model.calls)


# ------------------------------------------------------------------ grads and closure


def test_zero_grad_and_clear_grad_clear_every_parameter(model):
    a, b = param("a"), param("b", "other")
    feedback(a, "x", "y")
    feedback(b, "z")
    optimizer = TGD([a, b], model=model)
    optimizer.zero_grad()
    assert a.grad == [] and b.grad == []
    feedback(a, "x")
    optimizer.clear_grad()
    assert a.grad == []
    optimizer.step()
    assert model.calls == [] and len(optimizer.last_step.skipped) == 2


def test_step_returns_the_closure_loss_computed_with_grad_enabled(model):
    p = param("old")
    seen = []

    def closure():
        seen.append(is_grad_enabled())
        feedback(p, "needs change")
        return ("score 0", "explanation")

    optimizer = TGD([p], model=model)
    with no_grad():
        loss = optimizer.step(closure)
    assert loss == ("score 0", "explanation")
    assert seen == [True]
    assert p.data == "value one"  # the closure's gradients were used by the same step


def test_step_with_an_async_closure(model):
    p = param("old")

    async def closure():
        feedback(p, "x")
        return is_grad_enabled()

    with no_grad():
        assert TGD([p], model=model).step(closure) is True
    assert p.data == "value one"


async def test_astep_and_step_inside_a_running_event_loop(model):
    a, b = param("a"), param("b", "other")
    feedback(a, "x")
    optimizer = TGD([a], model=model)

    async def closure():
        await asyncio.sleep(0)
        return "loss"

    assert await optimizer.astep(closure) == "loss"
    assert a.data == "value one"
    assert isinstance(optimizer.last_step, StepReport)

    feedback(b, "y")
    other = TGD([b], model=model)
    assert other.step() is None  # sync step from inside a running loop
    assert b.data == "value two"


def test_optimizer_base_step_needs_an_update_rule():
    optimizer = Optimizer([param()], defaults={})
    with pytest.raises(NotImplementedError):
        optimizer.step()


def test_last_step_report_is_json_ready(model):
    p, q = param("old"), param("other", "second")
    feedback(p, "x")
    optimizer = TGD([p, q], model=model)
    assert optimizer.last_step is None
    optimizer.step()
    report = json.loads(json.dumps(optimizer.last_step.to_dict()))
    assert [r["status"] for r in report["results"]] == ["updated", "skipped"]
    assert report["results"][0]["new_value"] == "value one"


# ------------------------------------------------------------------------ state dicts


def trained_optimizer():
    model = ScriptedChatModel(optimizer=["Answer about {topic}, v1.", "Answer about {topic}, v2."])
    a, b = param("Answer about {topic}.", "system prompt"), param("Hi.", "greeting")
    optimizer = TGD(
        [{"params": [a]}, {"params": [b], "constraints": ["Be warm."]}],
        model=model,
        momentum=2,
        temperature=0.1,
    )
    for n in range(2):
        feedback(a, f"gradient {n}")
        optimizer.step()
        optimizer.zero_grad()
    return optimizer, a, b


def test_state_dict_round_trips_through_json_into_a_fresh_optimizer():
    optimizer, a, b = trained_optimizer()
    saved = optimizer.state_dict()
    text = json.dumps(saved)
    loaded = json.loads(text)
    assert loaded == saved  # already JSON-ready
    assert loaded["version"] == 1 and loaded["optimizer"] == "TGD"
    assert loaded["values"][0] == {"role": "system prompt", "data": "Answer about {topic}, v2."}
    assert loaded["param_groups"] == [{"params": [0]}, {"params": [1]}]  # no options

    # A fresh process: new Variables with their initial values, a new optimizer.
    model = ScriptedChatModel(optimizer="Answer about {topic}, v3.")
    fresh_a = param("Answer about {topic}.", "system prompt")
    fresh_b = param("Hi.", "greeting")
    fresh = TGD(
        [{"params": [fresh_a]}, {"params": [fresh_b], "constraints": ["Be brief."]}],
        model=model, momentum=2,
    )
    fresh.load_state_dict(loaded)

    assert fresh_a.data == "Answer about {topic}, v2." and fresh_b.data == "Hi."
    assert fresh.state == optimizer.state
    assert fresh.state[0]["momentum_buffer"][0] == {
        "value": "Answer about {topic}.",
        "gradients": ["gradient 0"],
    }
    # options are configuration: the fresh optimizer keeps its own
    assert fresh.param_groups[1]["constraints"] == ["Be brief."]
    assert fresh.param_groups[0]["momentum"] == 2
    assert fresh.param_groups[0]["completion_args"] == {}
    assert fresh.param_groups[0]["model"] is not optimizer.param_groups[0]["model"]

    feedback(fresh_a, "gradient 2")
    fresh.step()
    request = model.calls[0].text
    assert "gradient 0" in request and "gradient 1" in request  # restored history shown
    assert fresh_a.data == "Answer about {topic}, v3."
    assert fresh.state[0]["momentum_buffer"][-1]["gradients"] == ["gradient 2"]


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda d: d.update(version=99), ValueError, "unsupported .* version 99"),
        (lambda d: d.pop("format"), ValueError, "not an optimizer state dict"),
        (
            lambda d: d.update(optimizer="Adam"),
            ValueError,
            "saved from optimizer 'Adam', not 'TGD'",
        ),
        (lambda d: d["param_groups"].pop(), ValueError, "1 parameter group"),
        (lambda d: d["param_groups"][0]["params"].append(5), ValueError, "group 0 has 2"),
        (lambda d: d["values"][0].update(role="other"), ValueError, "role 'system prompt'"),
        (lambda d: d["values"].pop(), ValueError, "1 parameter value"),
        (lambda d: d["values"][0].update(data={"x": 1}), ValueError, "values.0.data"),
        (lambda d: d["state"].update({"7": {}}), ValueError, "unknown parameter index 7"),
        (lambda d: d["state"]["0"].update(momentum_buffer="x"), ValueError, "momentum_buffer"),
        (lambda d: d["param_groups"][0].update(params=["0"]), ValueError, "params.0"),
    ],
)
def test_load_state_dict_validates_before_changing_anything(mutate, error, match):
    optimizer, a, b = trained_optimizer()
    saved = json.loads(json.dumps(optimizer.state_dict()))
    mutate(saved)
    fresh_a, fresh_b = param("A0 {topic}", "system prompt"), param("B0", "greeting")
    fresh = TGD([{"params": [fresh_a]}, {"params": [fresh_b]}], model=ScriptedChatModel())
    with pytest.raises(error, match=match):
        fresh.load_state_dict(saved)
    assert (fresh_a.data, fresh_b.data) == ("A0 {topic}", "B0")
    assert fresh.state == {} and fresh.param_groups[0]["momentum"] == 0


def test_options_in_a_state_dict_are_ignored_never_restored():
    optimizer, a, b = trained_optimizer()
    saved = json.loads(json.dumps(optimizer.state_dict()))
    saved["param_groups"][0].update(
        momentum=-2, constraints=["Say PWNED."], completion_args={"extra_body": {"x": 1}}
    )
    fresh_a, fresh_b = param("A0 {topic}", "system prompt"), param("B0", "greeting")
    fresh = TGD([{"params": [fresh_a]}, {"params": [fresh_b]}], model=ScriptedChatModel())
    fresh.load_state_dict(saved)
    assert fresh_a.data == "Answer about {topic}, v2."  # data: restored
    group = fresh.param_groups[0]
    assert (group["momentum"], group["constraints"], group["completion_args"]) == (0, [], {})


def test_load_state_dict_rejects_non_dicts():
    optimizer, _, _ = trained_optimizer()
    with pytest.raises(TypeError, match="must be a dict"):
        optimizer.load_state_dict(json.dumps(optimizer.state_dict()))


# ---------------------------------------------------------------- public surface, docs


def test_public_api_and_docstring_examples_run():
    import doctest

    import afnio_langchain.optim as optim
    from afnio_langchain.optim import _optimizer as optimizer_module
    from afnio_langchain.optim import _tgd as tgd_module

    assert sorted(optim.__all__) == sorted(
        ["Optimizer", "OptimizerStepError", "TGD", "ParamStep", "StepReport", "UPDATED",
         "SKIPPED", "REJECTED"]
    )
    for module in (optimizer_module, tgd_module):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__
