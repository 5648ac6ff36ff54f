"""parameters(runnable): every trainable Variable once, in a stable order, found through
sequences, parallels, assigns, bindings, fallbacks, branches, configurables and lambdas."""

from __future__ import annotations

from operator import itemgetter

import pytest
from langchain_core.runnables import (
    ConfigurableField,
    RunnableBranch,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
)
from langchain_core.runnables.router import RouterRunnable

from afnio_langchain import ChatCompletionRunnable, Variable, parameters
from afnio_langchain.runnables import parameters as parameters_from_module
from afnio_langchain.testing import ScriptedChatModel

MODEL = ScriptedChatModel(forward="ok")


def trainable(name: str) -> Variable:
    return Variable(name, role=name, requires_grad=True)


def step(system: Variable, **kwargs) -> ChatCompletionRunnable:
    return ChatCompletionRunnable(model=MODEL, messages=[("system", system), ("user", "{q}")], **kwargs)


def test_public_import_paths_agree():
    assert parameters is parameters_from_module


def test_sequence_parallel_assign_and_bindings_in_execution_order():
    a, b, c, d, e = (trainable(n) for n in "abcde")
    chain = (
        step(a)
        | RunnableParallel(x=step(b).with_config(run_name="b"), y=step(c).with_retry())
        | RunnablePassthrough.assign(z=step(d).bind(temperature=0))
        | {"final": step(e), "picked": itemgetter("x")}
    )
    assert parameters(chain) == [a, b, c, d, e]


def test_shared_variables_and_repeated_steps_are_listed_once():
    a, b = trainable("a"), trainable("b")
    first = step(a)
    chain = first | RunnableParallel(again=first, other=step(a), last=step(b))
    assert parameters(chain) == [a, b]


def test_non_trainable_variables_are_skipped_and_default_inputs_are_included():
    frozen = Variable("frozen", role="x")
    tuned = trainable("tuned")
    example = trainable("few-shot example")
    s = ChatCompletionRunnable(
        model=MODEL,
        messages=[("system", frozen), ("system", tuned), ("user", "{example} {q}")],
        inputs={"example": example},
    )
    assert parameters(s) == [tuned, example] == s.parameters()


def test_fallbacks_branches_router_configurables_and_lambdas():
    a, b, c, d, e, f, g = (trainable(n) for n in "abcdefg")
    closed_over = step(g)
    chain = RunnableParallel(
        fb=step(a).with_fallbacks([step(b)]),
        br=RunnableBranch((lambda x: True, step(c)), step(d)),
        cf=step(e).configurable_fields(model=ConfigurableField(id="llm")),
        alt=step(f).configurable_alternatives(ConfigurableField(id="which"), other=step(a)),
        fn=RunnableLambda(lambda x: closed_over.invoke(x)),
    )
    assert parameters(chain) == [a, b, c, d, e, f, g]
    router = RouterRunnable(runnables={"one": step(a), "two": step(b)})
    assert parameters(router) == [a, b]


def test_variables_lists_and_dicts_are_accepted():
    a, b = trainable("a"), trainable("b")
    assert parameters(a) == [a]
    assert parameters([step(a), {"k": b}, Variable("plain")]) == [a, b]


def test_objects_with_their_own_parameters_method_are_asked():
    a = trainable("a")

    class Holder:
        def parameters(self):
            return [a, "not a variable"]

    assert parameters(Holder()) == [a]


def test_order_is_stable_across_calls():
    vs = [trainable(str(i)) for i in range(6)]
    chain = RunnableParallel({str(i): step(v) for i, v in enumerate(vs)})
    assert parameters(chain) == parameters(chain) == vs


@pytest.mark.parametrize("value", [None, 3, "text"])
def test_things_without_parameters_give_an_empty_list(value):
    assert parameters(value) == []
