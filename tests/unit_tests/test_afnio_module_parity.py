"""Parity with afnio (and PyTorch) of Module registration, of ``requires_grad_`` and
``empty_grad`` on chats, of evaluator target lengths and of optimizers given frozen
parameters. Hermetic: ScriptedChatModel only.

Tests marked "Adapted from PyTorch" follow ``test/test_nn.py`` of PyTorch
(``test_register_buffer_raises_error_if_attr_exists``,
``test_register_parameter_raises_error_if_attr_exists``, the ``..._allows_overwriting_with_same_name``
pairs and ``test_assignment``), with Parameters and Variables in place of tensors.
PyTorch is BSD-3-Clause licensed (Copyright (c) Meta Platforms, Inc. and affiliates).
"""

from __future__ import annotations

import pytest

import afnio_langchain as afnio
import afnio_langchain.cognitive as cog
import afnio_langchain.cognitive.functional as F
from afnio_langchain import Variable
from afnio_langchain.autodiff import DeterministicEvaluator
from afnio_langchain.optim import SKIPPED, TGD
from afnio_langchain.testing import ScriptedChatModel


def _param(data: str = "P", role: str = "param") -> cog.Parameter:
    return cog.Parameter(data, role=role, requires_grad=True)


class _WithParameter(cog.Module):
    def __init__(self) -> None:
        super().__init__()
        self.p = _param()


# ------------------------------------------------------------- 1. names of another kind


def test_register_buffer_over_a_parameter_raises_and_state_dict_keeps_the_parameter():
    m = _WithParameter()
    with pytest.raises(KeyError, match="attribute 'p' already exists"):
        m.register_buffer("p", Variable("BUF", role="buf"))
    assert [n for n, _ in m.named_buffers()] == []
    assert {k: v.data for k, v in m.state_dict().items()} == {"p": "P"}


def test_register_buffer_raises_if_attr_exists():
    """Adapted from PyTorch: test_register_buffer_raises_error_if_attr_exists."""
    m = cog.Module()
    m.attribute_name = 5
    with pytest.raises(KeyError):
        m.register_buffer("attribute_name", Variable("x"))

    del m.attribute_name
    m.register_parameter("attribute_name", _param())
    with pytest.raises(KeyError):
        m.register_buffer("attribute_name", Variable("x"))

    del m.attribute_name
    m.add_module("attribute_name", cog.Module())
    with pytest.raises(KeyError):
        m.register_buffer("attribute_name", Variable("x"))


def test_register_parameter_raises_if_attr_exists():
    """Adapted from PyTorch: test_register_parameter_raises_error_if_attr_exists."""
    m = cog.Module()
    m.attribute_name = 5
    with pytest.raises(KeyError):
        m.register_parameter("attribute_name", _param())

    del m.attribute_name
    m.register_buffer("attribute_name", Variable("x"))
    with pytest.raises(KeyError):
        m.register_parameter("attribute_name", _param())
    assert [n for n, _ in m.named_parameters()] == []

    del m.attribute_name
    m.add_module("attribute_name", cog.Module())
    with pytest.raises(KeyError):
        m.register_parameter("attribute_name", _param())


def test_register_module_and_other_kinds_refuse_a_parameter_name():
    m = _WithParameter()
    for register, value in [
        (m.register_module, cog.Module()),
        (m.register_chat, [{"role": "user", "content": [Variable("hi")]}]),
        (m.register_model, ScriptedChatModel()),
        (m.register_completion_config, {"temperature": 0}),
        (m.register_function, len),
    ]:
        with pytest.raises(KeyError, match="attribute 'p' already exists"):
            register("p", value)
    assert m.p.data == "P" and [n for n, _ in m.named_children()] == []


def test_register_buffer_over_a_submodule_raises():
    m = cog.Module()
    m.chat = cog.ChatCompletion()
    with pytest.raises(KeyError, match="attribute 'chat' already exists"):
        m.register_buffer("chat", Variable("BUF"))
    assert isinstance(m.chat, cog.ChatCompletion)
    assert [n for n, _ in m.named_buffers()] == []


def test_register_over_a_class_attribute_raises():
    """As in PyTorch: a method name is taken (``hasattr(self, name)``)."""
    with pytest.raises(KeyError, match="attribute 'forward' already exists"):
        cog.Module().register_buffer("forward", Variable("x"))


@pytest.mark.parametrize(
    ("register", "make"),
    [("register_buffer", Variable), ("register_parameter", lambda text: _param(text))],
    ids=["buffer", "parameter"],
)
def test_registering_the_same_kind_again_replaces(register, make):
    """Adapted from PyTorch: test_register_{buffer,parameter}_allows_overwriting_with_same_name."""
    m = cog.Module()
    first, second = make("one"), make("two")
    getattr(m, register)("name_of_it", first)
    assert m.name_of_it is first
    getattr(m, register)("name_of_it", second)
    assert m.name_of_it is second
    getattr(m, register)("name_of_it", None)
    assert m.name_of_it is None


def test_registering_a_module_again_replaces():
    m = cog.Module()
    c1, c2 = cog.Module(), cog.Module()
    m.register_module("child", c1)
    m.register_module("child", c2)
    assert m.child is c2


def test_assignment():
    """Adapted from PyTorch: test_assignment (Parameters and sub-modules; then a buffer)."""
    m = cog.Module()

    def check(get_list, a, b, c):
        m.a = None  # None can be shadowed: a plain attribute
        assert m.a is None and "a" in m.__dict__
        m.a = a
        assert m.a is a and get_list() == [a] and "a" not in m.__dict__
        m.b = None
        assert m.b is None and "b" in m.__dict__
        m.b = b
        assert m.b is b and get_list() == [a, b]
        # Remove and add the object back: the order is unchanged.
        m.a = None
        assert m.a is None and get_list() == [b]
        m.a = a
        assert get_list() == [a, b]
        # Replace the object with another one: the order is unchanged.
        m.a = c
        assert m.a is c and get_list() == [c, b]
        # Delete and assign again: it comes last.
        del m.a
        assert not hasattr(m, "a")
        m.a = a
        assert get_list() == [b, a]

    check(lambda: list(m.parameters()), _param("a"), _param("b"), _param("c"))
    del m.a, m.b
    assert list(m.parameters()) == []

    check(lambda: list(m.children()), cog.Module(), cog.Module(), cog.Module())
    del m.a, m.b
    assert list(m.children()) == []

    buf = Variable("buffer", role="buf")
    m.register_buffer("buf", buf)
    assert m.buf is buf
    m.buf = None
    assert m.buf is None and "buf" not in m.__dict__
    m.buf = buf
    assert m.state_dict()["buf"].data == "buffer"


def test_assigning_a_parameter_to_a_buffer_name_makes_it_a_parameter():
    """PyTorch's __setattr__: a Parameter replaces a buffer (or module) of that name."""
    m = cog.Module()
    m.register_buffer("x", Variable("BUF"), persistent=False)
    m.x = _param("PARAM")
    assert [n for n, _ in m.named_parameters()] == ["x"]
    assert [n for n, _ in m.named_buffers()] == []
    assert {k: v.data for k, v in m.state_dict().items()} == {"x": "PARAM"}
    m.x = cog.Module()
    assert list(m.parameters()) == [] and [n for n, _ in m.named_children()] == ["x"]
    m.register_buffer("y", Variable("ok"))
    with pytest.raises(TypeError):
        m.y = "not a Variable"


# ----------------------------------------------------------------------- 2. chat Variables


class _WithChat(cog.Module):
    def __init__(self) -> None:
        super().__init__()
        self.system = Variable("You are helpful.", role="system", requires_grad=True)
        self.user = Variable("hi", role="user")
        self.register_chat(
            "history",
            [
                {"role": "system", "content": [self.system]},
                {"role": "user", "content": self.user},  # a single Variable as content
            ],
        )
        self.p = _param()


def test_requires_grad_reaches_the_variables_of_chats():
    m = _WithChat()
    assert m.requires_grad_(False) is m
    assert not m.system.requires_grad and not m.user.requires_grad and not m.p.requires_grad
    m.requires_grad_(True)
    assert m.system.requires_grad and m.user.requires_grad and m.p.requires_grad


def test_requires_grad_reaches_chats_of_submodules_and_skips_non_leaves():
    model = ScriptedChatModel(forward="Ciao")
    system = Variable("Translate.", role="system", requires_grad=True)
    earlier = afnio.autodiff.Add.apply(system, Variable(" Be brief."))  # a non-leaf
    outer = cog.Module()
    outer.chat = cog.ChatCompletion()
    outer.chat(model, [{"role": "system", "content": [system, earlier]}])
    outer.requires_grad_(False)
    assert system.requires_grad is False
    assert earlier.grad_fn is not None and earlier.requires_grad  # left alone


@pytest.mark.parametrize("method", ["empty_grad", "zero_grad"])
def test_empty_grad_clears_the_variables_of_chats(method):
    m = _WithChat()
    m.system.grad = [Variable("feedback")]
    m.p.grad = [Variable("feedback")]
    getattr(m, method)()
    assert m.system.grad == [] and m.p.grad == []


# ---------------------------------------------------------------------- 3. target lengths


def test_one_item_target_list_is_not_reused_for_a_minibatch():
    with pytest.raises(ValueError, match=r"target has 1 items but the prediction has 2"):
        F.exact_match_evaluator(Variable(["a", "b"], requires_grad=True), ["a"])


def test_target_list_variable_must_match_the_prediction_length():
    with pytest.raises(ValueError, match=r"target has 1 items but the prediction has 3"):
        cog.ExactMatchEvaluator()(Variable(["a", "b", "c"]), Variable(["a"]))
    with pytest.raises(ValueError, match=r"target has 3 items but the prediction has 2"):
        DeterministicEvaluator.apply(Variable(["a", "b"]), ["a", "b", "c"], lambda p, t: p == t)


def test_a_single_target_is_used_for_every_item():
    prediction = Variable(["a", "b", "a"])
    for target in ("a", Variable("a", role="expected")):
        score, _ = F.exact_match_evaluator(prediction, target, None)
        assert score.data == [1, 0, 1]
    score, _ = DeterministicEvaluator.apply(Variable([1, 2]), 2, lambda p, t: p == t)
    assert score.data == [0, 1]
    # A one-item list for a single prediction is fine (afnio's `target = "red",`).
    assert F.exact_match_evaluator(Variable("red"), ("red",))[0].data == 1


def test_lm_judge_target_list_must_match_the_prediction_length():
    judge = ScriptedChatModel(judge='{"score": 1, "explanation": "ok"}')
    messages = [{"role": "user", "content": [Variable("{prediction} vs {target}")]}]
    with pytest.raises(ValueError, match="prediction.*3.*target.*1"):
        F.lm_judge_evaluator(judge, messages, Variable(["a", "b", "c"]), ["a"])


# ----------------------------------------------------------------- 4. frozen parameters


class _MedQA(cog.Module):
    """afnio's Module docstring example: a frozen Parameter next to a trainable one."""

    def __init__(self) -> None:
        super().__init__()
        self.system_prompt = cog.Parameter(
            data="You are a doctor.", role="system prompt", requires_grad=True
        )
        self.topics = cog.Parameter(
            data="Dermatology and Cardiology", role="medical topics", requires_grad=False
        )


def test_optimizer_accepts_a_module_with_a_frozen_parameter_and_leaves_it_unchanged():
    medqa = _MedQA()
    model = ScriptedChatModel(optimizer="You are a dermatologist.")
    optimizer = TGD(medqa.parameters(), model=model)  # afnio's configure_optimizers
    assert [p.role for p in optimizer.params] == ["system prompt", "medical topics"]
    medqa.system_prompt.grad = [Variable("Be more specific.")]
    medqa.topics.grad = [Variable("Add neurology.")]  # set by hand: still frozen
    optimizer.step()
    assert medqa.system_prompt.data == "You are a dermatologist."
    assert medqa.topics.data == "Dermatology and Cardiology"
    assert optimizer.last_step[1].status == SKIPPED
    assert len(model.calls_of("optimizer")) == 1


def test_add_param_group_accepts_frozen_parameters():
    optimizer = TGD([_param()], model=ScriptedChatModel(optimizer="new"))
    optimizer.add_param_group({"params": [cog.Parameter("frozen", requires_grad=False)]})
    assert len(optimizer.params) == 2


def test_optimizer_with_no_parameter_requiring_grad_raises():
    frozen = [cog.Parameter("a", role="a", requires_grad=False), Variable("b", role="b")]
    with pytest.raises(ValueError, match="no parameter requires grad.*neither do the others"):
        TGD(frozen, model=ScriptedChatModel())
