"""Variable, Function, the recorded graph, backward entry points and grad mode."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from afnio_langchain import (
    Variable,
    enable_grad,
    is_grad_enabled,
    no_grad,
    set_grad_enabled,
)
from afnio_langchain.autodiff import AccumulateGrad, Add, Function, Sum

# --------------------------------------------------------------------------- helpers


class Echo(Function):
    """forward(ctx, ...) style: copies the text; backward passes feedback through."""

    seen_needs: list = []

    @staticmethod
    def forward(ctx, x, y=None):
        ctx.save_for_backward(x, y)
        Echo.seen_needs.append(ctx.needs_input_grad)
        return Variable(x.data, role="echo")

    @staticmethod
    def backward(ctx, grad_output):
        x, y = ctx.saved_variables
        gx = Variable(f"x: {grad_output.data}", role=f"feedback to {x.role}")
        gy = None if y is None else Variable(f"y: {grad_output.data}", role=f"feedback to {y.role}")
        if y is None:
            return gx
        return (gx if ctx.needs_input_grad[0] else None, gy if ctx.needs_input_grad[1] else None)


class Shout(Function):
    """forward(...) + setup_context style."""

    @staticmethod
    def forward(x, suffix="!"):
        return Variable(str(x.data).upper() + suffix, role="shout")

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x, *_rest) = inputs
        ctx.save_for_backward(x)
        ctx.output_text = output.data

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_variables
        return Variable(f"{ctx.output_text} <- {grad_output.data}", role=f"feedback to {x.role}")


class AsyncReverse(Function):
    """An op written only with aforward/abackward."""

    @staticmethod
    async def aforward(ctx, x):
        await asyncio.sleep(0)
        ctx.save_for_backward(x)
        return Variable(str(x.data)[::-1], role="reversed")

    @staticmethod
    async def abackward(ctx, grad_output):
        await asyncio.sleep(0)
        (x,) = ctx.saved_variables
        return Variable(f"reversed: {grad_output.data}", role=f"feedback to {x.role}")


def via_add(role, feedback):
    """Feedback as ``Add`` passes it to an input (afnio's wording)."""
    return f"Here is the combined feedback we got for this specific {role} and other variables: {feedback}"


def leaf(text="a", role="x"):
    return Variable(text, role=role, requires_grad=True)


# --------------------------------------------------------------------------- construction


def test_variable_defaults_and_data():
    v = Variable("hello", role="greeting")
    assert v.data == "hello"
    assert v.role == "greeting"
    assert v.requires_grad is False
    assert v.grad == []
    assert v.grad_fn is None
    assert v.is_leaf
    assert Variable(["a", "b"]).data == ["a", "b"]
    assert Variable(("a", "b")).data == ["a", "b"]  # tuples become lists


@pytest.mark.parametrize(
    "data, expected",
    [
        (None, "str"),
        (b"bytes", "str"),
        ({"a": 1}, "str"),
        (True, "str"),
        (["ok", None], "item 1"),
        (["ok", ["nested"]], "item 1"),
        (object(), "str"),
    ],
)
def test_variable_rejects_bad_data_with_a_helpful_message(data, expected):
    with pytest.raises(TypeError, match=expected):
        Variable(data)


def test_variable_rejects_bad_role_and_requires_grad():
    with pytest.raises(TypeError, match="role must be a str"):
        Variable("x", role=3)
    with pytest.raises(TypeError, match="requires_grad must be a bool"):
        Variable("x", requires_grad="yes")
    with pytest.raises(TypeError, match="requires_grad must be a bool"):
        Variable("x").requires_grad_(1)


def test_setting_data_is_validated():
    v = Variable("x")
    v.data = ["a", "b"]
    assert v.data == ["a", "b"]
    with pytest.raises(TypeError):
        v.data = None
    assert v.data == ["a", "b"]


# --------------------------------------------------------------------------- leaf rules


def test_is_leaf_rules():
    plain = Variable("a")
    trainable = leaf()
    assert plain.is_leaf and trainable.is_leaf

    out = trainable + plain
    assert out.requires_grad
    assert out.grad_fn is not None
    assert not out.is_leaf

    no_grad_inputs = Variable("a") + Variable("b")
    assert no_grad_inputs.grad_fn is None
    assert not no_grad_inputs.requires_grad
    assert no_grad_inputs.is_leaf


def test_requires_grad_():
    v = Variable("a")
    assert v.requires_grad_() is v
    assert v.requires_grad
    v.requires_grad_(False)
    assert not v.requires_grad
    v.requires_grad = True
    assert v.requires_grad

    out = v + "b"
    with pytest.raises(RuntimeError, match="leaf"):
        out.requires_grad_(False)
    assert out.requires_grad


def test_detach_is_a_new_leaf_outside_the_graph():
    x = leaf("hello", role="greeting")
    y = x + Variable(" world", role="w")
    d = y.detach()
    assert d is not y
    assert d.data == "hello world"
    assert d.role == y.role
    assert d.grad_fn is None
    assert not d.requires_grad
    assert d.is_leaf
    # batched data is copied, not shared
    b = Variable(["a", "b"], requires_grad=True)
    bd = b.detach()
    bd.data.append("c")
    assert b.data == ["a", "b"]


# --------------------------------------------------------------------------- graph structure


def test_grad_fn_names_and_edges():
    x = leaf("a", role="first")
    const = Variable("b", role="constant")
    y = x + const
    assert y.grad_fn.name() == "AddBackward0"
    assert "AddBackward0" in repr(y)
    (x_edge, const_edge) = y.grad_fn.next_functions
    assert isinstance(x_edge[0], AccumulateGrad)
    assert x_edge[0].name() == "AccumulateGrad"
    assert x_edge[0].variable is x
    assert x_edge[1] == 0
    assert const_edge == (None, 0)

    z = y + x
    (y_edge, x_edge2) = z.grad_fn.next_functions
    assert y_edge == (y.grad_fn, 0)
    # the same leaf always gets the same AccumulateGrad node
    assert x_edge2[0] is x_edge[0]

    s = Sum.apply([x, const, y])
    assert s.grad_fn.name() == "SumBackward0"
    assert [n for n, _ in s.grad_fn.next_functions] == [x_edge[0], None, y.grad_fn]


def test_custom_function_names_and_output_nr():
    x = leaf()
    out = Shout.apply(x)
    assert out.grad_fn.name() == "ShoutBackward0"
    assert out.output_nr == 0

    class Pair(Function):
        @staticmethod
        def forward(ctx, x):
            return Variable("1"), Variable("2")

        @staticmethod
        def backward(ctx, g1, g2):
            return Variable(f"{g1 and g1.data}|{g2 and g2.data}")

    a, b = Pair.apply(x)
    assert a.grad_fn is b.grad_fn
    assert (a.output_nr, b.output_nr) == (0, 1)
    c = a + b
    assert c.grad_fn.next_functions == ((a.grad_fn, 0), (a.grad_fn, 1))


# --------------------------------------------------------------------------- grad lists


def test_grad_is_append_only_for_two_paths_and_retained_graphs():
    x = leaf("a", role="rule")
    y = x + x  # x reached by two paths
    y.backward("too short", retain_graph=True)
    assert [g.data for g in x.grad] == [via_add("rule", "too short")] * 2
    assert all(g.role == "feedback to rule" for g in x.grad)
    first = list(x.grad)

    y.backward("still short", retain_graph=True)
    assert len(x.grad) == 4
    assert x.grad[:2] == first  # earlier entries kept as they were
    assert [g.data for g in x.grad[2:]] == [via_add("rule", "still short")] * 2


def test_reading_grad_of_non_leaf():
    x = leaf()
    y = x + "b"
    with pytest.raises(RuntimeError, match="retain_grad"):
        _ = y.grad

    z = x + "c"
    z.retain_grad()
    assert z.retains_grad
    w = z + "d"
    w.backward("feedback on w")
    assert [g.data for g in z.grad] == [via_add("x", "feedback on w")]
    assert [g.data for g in x.grad] == [via_add("x", via_add("x", "feedback on w"))]


def test_retain_grad_needs_requires_grad():
    with pytest.raises(RuntimeError):
        Variable("a").retain_grad()


def test_backward_without_graph_raises():
    with pytest.raises(RuntimeError):
        Variable("a").backward("f")
    with pytest.raises(RuntimeError):
        leaf().backward("f")  # requires grad, but no grad_fn
    with no_grad():
        y = leaf() + "b"
    with pytest.raises(RuntimeError):
        y.backward("f")


def test_second_backward_needs_retain_graph():
    x = leaf()
    y = x + "b"
    y.backward("first")
    with pytest.raises(RuntimeError, match="retain_graph"):
        y.backward("second")
    assert [g.data for g in x.grad] == [via_add("x", "first")]

    x2 = leaf()
    y2 = x2 + "b"
    y2.backward("first", retain_graph=True)
    y2.backward("second")
    assert [g.data for g in x2.grad] == [via_add("x", "first"), via_add("x", "second")]
    with pytest.raises(RuntimeError):
        y2.backward("third")


def test_saved_variables_are_freed_after_backward():
    x = leaf()
    y = Echo.apply(x)
    assert y.grad_fn.ctx.saved_variables[0] is x
    y.backward("f")
    with pytest.raises(RuntimeError):
        _ = y.grad_fn.ctx.saved_variables


def test_backward_without_feedback_on_a_plain_output_raises():
    y = leaf() + "b"
    with pytest.raises(RuntimeError, match="feedback"):
        y.backward()


# --------------------------------------------------------------------------- gradient forms


def test_backward_accepts_str_and_variable():
    x = leaf("a", role="rule")
    y = x + "b"
    y.backward(Variable("as a variable", role="feedback"), retain_graph=True)
    y.backward("as a str")
    assert [g.data for g in x.grad] == [via_add("rule", "as a variable"), via_add("rule", "as a str")]
    assert all(isinstance(g, Variable) for g in x.grad)


def test_backward_on_a_minibatch_takes_a_list_or_broadcasts_a_str():
    items = Variable(["one", "two"], role="items", requires_grad=True)
    y = items + "!"
    assert y.data == ["one!", "two!"]
    y.backward(["fix one", "fix two"], retain_graph=True)
    assert items.grad[0].data == [via_add("items", "fix one"), via_add("items", "fix two")]
    y.backward("fix all")
    assert items.grad[1].data == [via_add("items", "fix all")] * 2


def test_scalar_input_of_a_minibatch_gets_joined_feedback():
    prefix = leaf("Q: ", role="prefix")
    y = prefix + Variable(["one", "two"], role="items")
    y.backward(["first", "second"])
    assert len(prefix.grad) == 1
    assert "first" in prefix.grad[0].data and "second" in prefix.grad[0].data


@pytest.mark.parametrize("gradient", [123, 4.5, {"a": "b"}, ["ok", 3], b"bytes", object()])
def test_backward_rejects_bad_gradient_types(gradient):
    x = leaf()
    y = x + "b"
    with pytest.raises(TypeError, match="gradient"):
        y.backward(gradient)
    assert x.grad == []


def test_backward_rejects_gradient_of_the_wrong_shape():
    x = leaf()
    y = x + "b"
    with pytest.raises(ValueError):
        y.backward(["a", "b"])
    batch = Variable(["a", "b"], requires_grad=True) + "!"
    with pytest.raises(ValueError):
        batch.backward(["only one", "two", "three"])
    assert x.grad == []


# --------------------------------------------------------------------------- custom Functions


def test_function_with_ctx_forward():
    Echo.seen_needs.clear()
    x = leaf("hi", role="greeting")
    y = Variable("other", role="other")
    out = Echo.apply(x, y)
    assert out.data == "hi"
    assert Echo.seen_needs == [(True, False)]
    assert out.grad_fn.ctx.needs_input_grad == (True, False)
    assert out.grad_fn.ctx.saved_variables == (x, y)
    out.backward("be louder")
    assert [g.data for g in x.grad] == ["x: be louder"]
    assert y.grad == []


def test_function_with_setup_context():
    x = leaf("hi", role="greeting")
    out = Shout.apply(x, suffix="?")
    assert out.data == "HI?"
    assert out.grad_fn.name() == "ShoutBackward0"
    out.backward("too loud")
    assert [g.data for g in x.grad] == ["HI? <- too loud"]
    assert x.grad[0].role == "feedback to greeting"


def test_async_function_apply_and_aapply():
    x = leaf("abc", role="word")
    out = AsyncReverse.apply(x)
    assert out.data == "cba"
    assert out.grad_fn.name() == "AsyncReverseBackward0"
    out.backward("wrong")
    assert [g.data for g in x.grad] == ["reversed: wrong"]


async def test_async_function_aapply_and_abackward():
    x = leaf("abc", role="word")
    out = await AsyncReverse.aapply(x)
    assert out.data == "cba"
    await out.abackward("wrong")
    assert [g.data for g in x.grad] == ["reversed: wrong"]


def test_no_record_without_grad_inputs():
    Echo.seen_needs.clear()
    out = Echo.apply(Variable("a"))
    assert out.grad_fn is None
    assert not out.requires_grad
    assert Echo.seen_needs == [(False,)]


def test_apply_with_wrong_arguments_raises_before_forward_runs():
    calls = []

    class Strict(Function):
        @staticmethod
        def forward(ctx, x):
            calls.append(x)
            return Variable("y")

        @staticmethod
        def backward(ctx, g):
            return g

    x = leaf()
    with pytest.raises(TypeError, match="Strict"):
        Strict.apply(x, "extra")
    with pytest.raises(TypeError):
        Strict.apply()
    with pytest.raises(TypeError):
        Strict.apply(x, unknown=1)
    with pytest.raises(TypeError):
        Shout.apply(x, "!", "extra")
    assert calls == []


def test_function_without_forward_is_a_type_error():
    class Nothing(Function):
        pass

    with pytest.raises(TypeError, match="forward"):
        Nothing.apply(leaf())


def test_backward_returning_the_wrong_number_of_gradients_fails():
    class Bad(Function):
        @staticmethod
        def forward(ctx, x, y):
            return Variable("z")

        @staticmethod
        def backward(ctx, g):
            return (g,)  # two inputs, one gradient

    x = leaf()
    out = Bad.apply(x, leaf())
    with pytest.raises(RuntimeError, match="BadBackward0"):
        out.backward("f")
    assert x.grad == []


def test_save_for_backward_only_takes_variables():
    class SavesText(Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward("not a variable")
            return Variable("y")

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(TypeError):
        SavesText.apply(leaf())


def test_operations_inside_forward_are_not_recorded():
    class Inner(Function):
        @staticmethod
        def forward(ctx, x):
            inner = x + "!"  # would record a node if grad mode stayed on
            ctx.inner_had_grad_fn = inner.grad_fn is not None
            return inner

        @staticmethod
        def backward(ctx, g):
            return g

    x = leaf()
    out = Inner.apply(x)
    assert out.grad_fn.name() == "InnerBackward0"
    assert out.grad_fn.ctx.inner_had_grad_fn is False
    assert out.grad_fn.next_functions[0][0].variable is x


def test_op_returning_its_input_gets_its_own_output():
    class Identity(Function):
        @staticmethod
        def forward(ctx, x):
            return x

        @staticmethod
        def backward(ctx, g):
            return g

    x = leaf("same")
    y = Identity.apply(x)
    assert y is not x
    assert y.data == "same"
    assert x.is_leaf and x.grad_fn is None
    y.backward("f")
    assert [g.data for g in x.grad] == ["f"]


# --------------------------------------------------------------------------- grad mode


def test_no_grad_context_manager():
    x = leaf()
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = x + "b"
        with enable_grad():
            assert is_grad_enabled()
            z = x + "c"
        assert not is_grad_enabled()
    assert is_grad_enabled()
    assert y.grad_fn is None and not y.requires_grad
    assert z.grad_fn is not None


def test_set_grad_enabled_context_and_plain_call():
    with set_grad_enabled(False):
        assert not is_grad_enabled()
        with set_grad_enabled(True):
            assert is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()

    with pytest.raises(TypeError):
        set_grad_enabled("no")

    def plain_call_in_a_copied_context():
        set_grad_enabled(False)
        return is_grad_enabled()

    import contextvars

    ctx = contextvars.copy_context()
    assert ctx.run(plain_call_in_a_copied_context) is False
    assert is_grad_enabled()


def test_constructing_no_grad_does_not_switch_the_mode():
    cm = no_grad()
    try:
        assert is_grad_enabled(), "no_grad() must only take effect when entered"
    finally:
        with cm:
            pass
    assert is_grad_enabled()


def test_a_no_grad_instance_can_be_reused():
    inference = no_grad()
    with inference:
        assert not is_grad_enabled()
    assert is_grad_enabled()
    with inference:
        assert not is_grad_enabled()
    assert is_grad_enabled()


def test_grad_mode_restored_after_exception():
    with pytest.raises(ValueError):
        with no_grad():
            raise ValueError("boom")
    assert is_grad_enabled()


def test_no_grad_and_set_grad_enabled_as_decorators():
    x = leaf()

    @no_grad()
    def build():
        assert not is_grad_enabled()
        return x + "b"

    @set_grad_enabled(False)
    def build2():
        return x + "c"

    assert is_grad_enabled()  # decorating does not switch the mode
    assert build().grad_fn is None
    assert build2().grad_fn is None
    assert is_grad_enabled()
    assert build.__name__ == "build"


async def test_no_grad_decorates_async_functions():
    x = leaf()

    @no_grad()
    async def build():
        await asyncio.sleep(0)
        assert not is_grad_enabled()
        return x + "b"

    assert asyncio.iscoroutinefunction(build)
    assert is_grad_enabled()
    y = await build()
    assert y.grad_fn is None
    assert is_grad_enabled()


def test_grad_mode_is_isolated_between_threads():
    barrier = threading.Barrier(2, timeout=5)

    def disables():
        with no_grad():
            barrier.wait()  # the other thread checks while we are inside no_grad
            barrier.wait()
            return is_grad_enabled()

    def observes():
        barrier.wait()
        enabled = is_grad_enabled()
        y = leaf() + "b"
        barrier.wait()
        return enabled, y.grad_fn is not None

    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(disables)
        b = pool.submit(observes)
        assert a.result() is False
        assert b.result() == (True, True)

    # and a no_grad in the caller does not follow into a fresh worker thread
    with no_grad():
        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(is_grad_enabled).result() is True
    assert is_grad_enabled()


async def test_grad_mode_is_isolated_between_asyncio_tasks():
    inside = asyncio.Event()
    checked = asyncio.Event()

    async def disables():
        with no_grad():
            inside.set()
            await checked.wait()
            return is_grad_enabled()

    async def observes():
        await inside.wait()
        enabled = is_grad_enabled()
        y = leaf() + "b"
        checked.set()
        return enabled, y.grad_fn is not None

    a, b = await asyncio.gather(disables(), observes())
    assert a is False
    assert b == (True, True)
    assert is_grad_enabled()


async def test_no_grad_in_caller_follows_into_child_tasks():
    async def child():
        return is_grad_enabled()

    with no_grad():
        assert await asyncio.create_task(child()) is False
    assert await asyncio.create_task(child()) is True


# --------------------------------------------------------------------------- event loops


async def test_sync_backward_inside_a_running_event_loop():
    x = leaf("abc", role="word")
    y = AsyncReverse.apply(x)  # sync apply of an async op, inside a running loop
    z = y + Variable("!", role="bang")
    z.backward("from a notebook")
    assert [g.data for g in x.grad] == [f"reversed: {via_add('reversed', 'from a notebook')}"]


async def test_abackward():
    x = leaf("a", role="rule")
    y = x + x
    await y.abackward("async feedback")
    assert [g.data for g in x.grad] == [via_add("rule", "async feedback")] * 2
    with pytest.raises(RuntimeError):
        await y.abackward("again")


def test_add_is_a_function_subclass():
    assert issubclass(Add, Function)


def test_gradient_role_without_a_variable_role():
    x = Variable("a", requires_grad=True)
    (x + "b").backward("f")
    assert x.grad[0].role == "feedback"


def test_grad_mode_restored_when_forward_raises():
    class Boom(Function):
        @staticmethod
        def forward(ctx, x):
            assert not is_grad_enabled()  # forward runs with recording off
            raise ValueError("forward failed")

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(ValueError, match="forward failed"):
        Boom.apply(leaf())
    assert is_grad_enabled()


def test_grad_setter_accepts_variables_only_and_clears_with_none():
    x = leaf()
    (x + "b").backward("f")
    assert len(x.grad) == 1
    x.grad = None
    assert x.grad == []
    with pytest.raises(TypeError):
        x.grad = ["not a variable"]
