"""``Function.apply`` finds every Variable in its arguments, however they are nested,
in order (a chat op's messages hold them in dicts inside a list): the collector on
its hot path agrees with the documented :func:`iter_variables` on every shape."""

from __future__ import annotations

import random
from collections import OrderedDict, UserDict
from typing import Any

import pytest

from afnio_langchain import Variable
from afnio_langchain.autodiff import Function
from afnio_langchain.autodiff._function import _variables_in, iter_variables


class _ListSubclass(list):
    pass


class _VariableSubclass(Variable):
    pass


def _random_value(rng: random.Random, depth: int, made: list[Variable]) -> Any:
    choice = rng.randrange(9 if depth < 4 else 4)
    if choice == 0:
        made.append(Variable(f"v{len(made)}"))
        return made[-1]
    if choice == 1:
        made.append(_VariableSubclass(f"s{len(made)}"))
        return made[-1]
    if choice == 2:
        return rng.choice(["text", 3, None, 2.5, b"bytes"])
    if choice == 3:
        return UserDict({"hidden": Variable("not walked: not a dict")})
    containers = [list, tuple, _ListSubclass, dict, OrderedDict]
    kind = containers[choice - 4]
    items = [_random_value(rng, depth + 1, made) for _ in range(rng.randrange(4))]
    if kind in (dict, OrderedDict):
        return kind((f"k{i}", item) for i, item in enumerate(items))
    return kind(items)


def test_the_collector_agrees_with_iter_variables_on_random_nestings():
    rng = random.Random(7)
    for _ in range(500):
        value = _random_value(rng, 0, [])
        assert _variables_in(value) == list(iter_variables(value))


def test_variables_in_chat_messages_are_found_in_order():
    system = Variable("sys", requires_grad=True)
    user = Variable("user")
    draft = Variable("draft")
    messages = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [user, "and {draft}"]},
    ]
    args = ("model", messages, {"draft": draft})
    assert _variables_in(args) == [system, user, draft]


def test_apply_records_an_edge_for_each_nested_variable():
    class Concatenate(Function):
        @staticmethod
        def forward(ctx, parts):
            return Variable(" ".join(p.data for m in parts for p in m["content"]))

        @staticmethod
        def backward(ctx, grad):
            return (None,)

    a = Variable("a", requires_grad=True)
    b = Variable("b", requires_grad=True)
    out = Concatenate.apply([{"role": "user", "content": [a, b]}])
    assert out.data == "a b"
    assert out.grad_fn.ctx.needs_input_grad == (True, True)


class _Pair(Function):
    @staticmethod
    def forward(ctx, first, second=None, **extra):
        return Variable(f"{first.data} {getattr(second, 'data', '')}", role="pair")

    @staticmethod
    def backward(ctx, grad_output):
        return tuple(grad_output for _ in ctx.needs_input_grad)


def test_keyword_arguments_are_ordered_as_forward_declares_them_on_every_call():
    # The order is planned once per way of calling an op: later calls must agree.
    first, second = Variable("a", requires_grad=True), Variable("b")
    extra = Variable("n", requires_grad=True)
    for _ in range(3):
        assert _Pair.apply(second=second, first=first).grad_fn.ctx.needs_input_grad == (
            True,
            False,
        )
        assert _Pair.apply(first, note=extra, second=second).grad_fn.ctx.needs_input_grad == (
            True,
            False,
            True,
        )
        assert _Pair.apply(note=second, first=extra).grad_fn.ctx.needs_input_grad == (True, False)


def test_a_wrong_call_is_refused_every_time_however_often_the_op_was_called_right():
    first = Variable("a", requires_grad=True)
    for _ in range(3):
        _Pair.apply(first, second=first)
        with pytest.raises(TypeError, match=r"_Pair\.apply\(\): .*multiple values"):
            _Pair.apply(first, first=first)
        with pytest.raises(TypeError, match=r"_Pair\.apply\(\): .*'first'"):
            _Pair.apply(second=first)
