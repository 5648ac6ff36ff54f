"""ChatCompletion: safe templating, minibatches, gradient routing, backward models,
structured-reply retries, usage counting and input validation."""

from __future__ import annotations

import re

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from afnio_langchain import Variable, set_backward_model, track_usage
from afnio_langchain.autodiff import (
    BackwardError,
    ChatCompletion,
    MinibatchError,
    MissingInputError,
)
from afnio_langchain.models import StructuredOutputError
from afnio_langchain.testing import ScriptedChatModel


class Replies(BaseChatModel):
    """A plain LangChain chat model answering from a list (last reply repeats) and
    recording the text of every request."""

    replies: list[str]
    received: list[str] = []

    @property
    def _llm_type(self) -> str:
        return "replies"

    def _generate(self, messages, stop=None, run_manager=None, **kw):
        self.received = [*self.received, "\n".join(str(m.content) for m in messages)]
        reply = self.replies[min(len(self.received), len(self.replies)) - 1]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=reply))])


def user(template: str, role: str = "user query", requires_grad: bool = False):
    return {"role": "user", "content": [Variable(template, role=role, requires_grad=requires_grad)]}


def only_forward_text(model: ScriptedChatModel) -> str:
    (call,) = model.calls_of("forward")
    return call.text


# --------------------------------------------------------------------------- templating


def test_missing_input_raises_before_any_model_call():
    model = ScriptedChatModel(forward="x")
    with pytest.raises(MissingInputError, match="language") as info:
        ChatCompletion.apply(model, [user("Translate to {language}.")], inputs={"lang": "it"})
    assert isinstance(info.value, KeyError)
    assert "lang" in str(info.value)  # says what was given
    assert model.calls == []

    # in a minibatch too: nothing is sent when a field is missing
    with pytest.raises(MissingInputError, match="tone"):
        ChatCompletion.apply(
            model,
            [user("Translate to {language}."), user("Use a {tone} tone")],
            inputs={"language": ["it", "es", "fr"]},
        )
    assert model.calls == []


def test_format_syntax_and_json_braces_are_left_alone():
    model = ScriptedChatModel(forward="ok")
    template = (
        'Field {x.__class__} index {0} spec {x!r} json {"a": 1} code {} '
        "value {x} end"
    )
    ChatCompletion.apply(model, [user(template)], inputs={"x": "X"})
    text = only_forward_text(model)
    assert text == 'Field {x.__class__} index {0} spec {x!r} json {"a": 1} code {} value X end'


def test_input_values_are_inserted_verbatim_not_refilled():
    model = ScriptedChatModel(forward="ok")
    ChatCompletion.apply(
        model,
        [user("a={a} b={b}")],
        inputs={"a": "{b} and {a} and {x.__class__}", "b": "B"},
    )
    assert only_forward_text(model) == "a={b} and {a} and {x.__class__} b=B"


def test_learned_prompt_with_braces_does_not_break_formatting():
    """A system prompt written by an optimizer may contain braces: never parsed as a
    template beyond {identifier} fields that are given."""
    model = ScriptedChatModel(forward="ok")
    system = Variable('Reply as {"answer": "..."} JSON.', role="system", requires_grad=True)
    ChatCompletion.apply(model, [{"role": "system", "content": [system]}, user("{q}")],
                         inputs={"q": "hi"})
    assert only_forward_text(model) == 'Reply as {"answer": "..."} JSON.\nhi'


def test_double_braces_give_a_literal_field():
    model = ScriptedChatModel(forward="ok")
    ChatCompletion.apply(model, [user("literal {{name}} value {name}")], inputs={"name": "N"})
    assert only_forward_text(model) == "literal {name} value N"


def test_plain_str_content_and_multiple_parts():
    model = ScriptedChatModel(forward="ok")
    messages = [{"role": "user", "content": ["first {x}", Variable("second {x}")]}]
    ChatCompletion.apply(model, messages, inputs={"x": 1})
    (call,) = model.calls
    assert [m.content for m in call.messages] == ["first 1\nsecond 1"]


# --------------------------------------------------------------------------- minibatches


def test_minibatch_from_list_inputs():
    model = ScriptedChatModel(forward=lambda t: t.upper())
    out = ChatCompletion.apply(model, [user("say {w}")], inputs={"w": ["a", Variable("b"), "c"]})
    assert out.data == ["SAY A", "SAY B", "SAY C"]
    assert out.role == "assistant response"


def test_minibatch_from_variables_holding_lists():
    model = ScriptedChatModel(forward=lambda t: t.upper())
    out = ChatCompletion.apply(
        model, [user("say {w} {z}")], inputs={"w": Variable(["a", "b"]), "z": ["1", "2"]}
    )
    assert out.data == ["SAY A 1", "SAY B 2"]


def test_single_item_list_is_still_a_minibatch():
    model = ScriptedChatModel(forward="x")
    out = ChatCompletion.apply(model, [user("{w}")], inputs={"w": ["only"]})
    assert out.data == ["x"]
    scalar = ChatCompletion.apply(model, [user("{w}")], inputs={"w": "only"})
    assert scalar.data == "x"


def test_mismatched_minibatch_lengths_raise_value_error_before_calls():
    model = ScriptedChatModel(forward="x")
    with pytest.raises(ValueError, match="length"):
        ChatCompletion.apply(
            model, [user("{a} {b}")], inputs={"a": ["1", "2"], "b": Variable(["1", "2", "3"])}
        )
    with pytest.raises(ValueError):
        ChatCompletion.apply(model, [user("{a}")], inputs={"a": []})
    assert model.calls == []


def test_output_role_can_be_set():
    model = ScriptedChatModel(forward="x")
    out = ChatCompletion.apply(model, [user("hi")], output_role="translation")
    assert out.role == "translation"
    assert "output_role" not in model.calls[0].kwargs


# --------------------------------------------------------------------------- gradients


def test_one_gradient_per_differentiable_variable_in_order():
    model = ScriptedChatModel(forward="answer", feedback=["about the system", "about the input"])
    system = Variable("Be helpful.", role="system instruction", requires_grad=True)
    question = Variable("What is 2+2?", role="question", requires_grad=True)
    fixed = Variable("Answer briefly: {q}", role="template")
    messages = [{"role": "system", "content": [system]}, {"role": "user", "content": [fixed]}]

    out = ChatCompletion.apply(model, messages, inputs={"q": question}, backward_model=model)
    assert out.grad_fn.ctx.needs_input_grad == (True, False, True)
    out.backward("wrong answer")

    (call,) = model.calls_of("backward")
    assert re.search(r'keys: "var_1", "var_2"\.', call.text)
    assert 'role="system instruction"' in call.text and 'role="question"' in call.text
    assert [g.data for g in system.grad] == ["about the system"]
    assert [g.data for g in question.grad] == ["about the input"]
    assert system.grad[0].role == "feedback to system instruction"
    assert question.grad[0].role == "feedback to question"
    assert fixed.grad == []


def test_variable_inside_an_input_list_gets_only_its_own_items_gradient():
    model = ScriptedChatModel(
        forward="answer",
        feedback=lambda t: "about Italian" if "Italian" in t else "about Spanish",
    )
    italian = Variable("Italian", role="language", requires_grad=True)
    spanish = Variable("Spanish", role="language", requires_grad=True)
    out = ChatCompletion.apply(
        model, [user("Translate to {lang}")], inputs={"lang": [italian, spanish]},
        backward_model=model,
    )
    out.backward(["bad Italian", "bad Spanish"])
    assert [g.data for g in italian.grad] == ["about Italian"]
    assert [g.data for g in spanish.grad] == ["about Spanish"]
    # each backward call only asks about the item's own Variable
    for call in model.calls_of("backward"):
        assert call.text.count("<VARIABLE key=") == 1


def test_batched_variable_gets_one_list_gradient():
    model = ScriptedChatModel(
        forward="answer", feedback=lambda t: "about one" if "q-one" in t else "about three"
    )
    questions = Variable(["q-one", "q-two", "q-three"], role="questions", requires_grad=True)
    out = ChatCompletion.apply(model, [user("{q}")], inputs={"q": questions}, backward_model=model)
    out.backward(["fix", "", "fix"])
    (grad,) = questions.grad
    assert grad.data == ["about one", "", "about three"]
    assert grad.role == "feedback to questions"
    assert len(model.calls_of("backward")) == 2


def test_batched_variable_in_message_content_makes_a_minibatch():
    model = ScriptedChatModel(forward=lambda t: t.upper(), feedback="shorter")
    prompts = Variable(["p1", "p2"], role="prompts", requires_grad=True)
    out = ChatCompletion.apply(
        model, [{"role": "user", "content": [prompts]}], backward_model=model
    )
    assert out.data == ["P1", "P2"]
    out.backward("too long")
    assert [g.data for g in prompts.grad] == [["shorter", "shorter"]]


def test_empty_feedback_for_an_item_makes_no_backward_call():
    model = ScriptedChatModel(forward="answer", feedback="fix it")
    system = Variable("sys", role="system instruction", requires_grad=True)
    out = ChatCompletion.apply(
        model,
        [{"role": "system", "content": [system]}, user("{q}")],
        inputs={"q": ["good", "bad", "also good"]},
        backward_model=model,
    )
    out.backward(["", "this one is wrong", "   "])
    calls = model.calls_of("backward")
    assert len(calls) == 1
    assert "this one is wrong" in calls[0].text and "bad" in calls[0].text
    assert [g.data for g in system.grad] == ["fix it"]


def test_no_backward_call_when_nothing_in_the_op_requires_grad():
    model = ScriptedChatModel(forward="answer", feedback="fix")
    upstream = Variable("x", requires_grad=True)
    plain = ChatCompletion.apply(model, [user("hi")])
    assert plain.grad_fn is None
    joined = upstream + plain
    joined.backward("f")
    assert model.calls_of("backward") == []


def test_backward_model_per_op_overrides_the_default():
    default = ScriptedChatModel(feedback="from the default")
    own = ScriptedChatModel(feedback="from the op's own model")
    set_backward_model(default)
    forward = ScriptedChatModel(forward="answer")
    system = Variable("sys", role="system instruction", requires_grad=True)
    out = ChatCompletion.apply(
        forward, [{"role": "system", "content": [system]}, user("hi")], backward_model=own,
        temperature=0.2,
    )
    assert forward.calls[0].kwargs.get("temperature") == 0.2
    assert "backward_model" not in forward.calls[0].kwargs
    out.backward("f")
    assert default.calls == []
    assert [c.kind for c in own.calls] == ["backward"]
    assert [g.data for g in system.grad] == ["from the op's own model"]


def test_default_backward_model_is_used_when_op_has_none():
    default = ScriptedChatModel(feedback="from the default")
    forward = ScriptedChatModel(forward="answer")
    system = Variable("sys", role="system instruction", requires_grad=True)
    out = ChatCompletion.apply(forward, [{"role": "system", "content": [system]}, user("hi")])
    set_backward_model(default)  # set after forward: read at backward time
    out.backward("f")
    assert [g.data for g in system.grad] == ["from the default"]
    assert forward.calls_of("backward") == []


def test_missing_backward_model_names_the_fix():
    set_backward_model(None)
    forward = ScriptedChatModel(forward="answer")
    system = Variable("sys", role="system instruction", requires_grad=True)
    out = ChatCompletion.apply(forward, [{"role": "system", "content": [system]}, user("hi")])
    with pytest.raises(RuntimeError, match="set_backward_model"):
        out.backward("f")
    assert system.grad == []
    assert forward.calls_of("backward") == []


def test_malformed_backward_reply_is_retried():
    backward = Replies(
        replies=["Sure, here you go: no json at all", '{"var_1": "fix sys", "var_2": "fix q"}']
    )
    forward = ScriptedChatModel(forward="answer")
    system = Variable("sys", role="system instruction", requires_grad=True)
    question = Variable("q?", role="question", requires_grad=True)
    out = ChatCompletion.apply(
        forward,
        [{"role": "system", "content": [system]}, user("{q}")],
        inputs={"q": question},
        backward_model=backward,
    )
    out.backward("wrong")
    assert len(backward.received) == 2
    # the retry shows the bad reply and asks again for the keys
    assert "no json at all" in backward.received[1]
    assert '"var_1", "var_2"' in backward.received[1]
    assert [g.data for g in system.grad] == ["fix sys"]
    assert [g.data for g in question.grad] == ["fix q"]


def test_well_formed_scripted_feedback_needs_no_retry():
    """The feedback callable of a ScriptedChatModel is asked once per gradient: a
    well-formed reply is not re-requested."""
    count = {"n": 0}

    def feedback(text: str) -> str:
        count["n"] += 1
        return "ok"

    model = ScriptedChatModel(forward="answer", feedback=feedback)
    system = Variable("sys", role="system instruction", requires_grad=True)
    out = ChatCompletion.apply(
        model, [{"role": "system", "content": [system]}, user("hi")], backward_model=model
    )
    out.backward("f")
    assert count["n"] == 1
    assert [g.data for g in system.grad] == ["ok"]


def test_persistent_garbage_names_the_node_and_the_reply():
    backward = Replies(replies=["GARBAGE-REPLY without any object"])
    forward = ScriptedChatModel(forward="answer")
    system = Variable("sys", role="system instruction", requires_grad=True)
    question = Variable("q?", role="question", requires_grad=True)
    out = ChatCompletion.apply(
        forward,
        [{"role": "system", "content": [system]}, user("{q}")],
        inputs={"q": question},
        backward_model=backward,
    )
    with pytest.raises(RuntimeError) as info:
        out.backward("wrong")
    message = str(info.value)
    assert "ChatCompletionBackward0" in message
    assert "GARBAGE-REPLY" in message
    assert isinstance(info.value, BackwardError)
    assert isinstance(info.value.__cause__, StructuredOutputError)
    assert 1 < len(backward.received) <= 5  # retried, but a bounded number of times
    assert system.grad == [] and question.grad == []


def test_usage_is_counted_per_purpose():
    model = ScriptedChatModel(forward="the answer", feedback="feedback text")
    system = Variable("sys", role="system instruction", requires_grad=True)
    with track_usage() as usage:
        out = ChatCompletion.apply(
            model,
            [{"role": "system", "content": [system]}, user("{q}")],
            inputs={"q": ["a", "b", "c"]},
            backward_model=model,
        )
        out.backward(["fix", "", "fix"])
    by_purpose = usage.by_purpose()
    assert by_purpose["forward"].calls == 3
    assert by_purpose["backward"].calls == 2
    assert by_purpose["forward"].output_tokens == 3 * 2  # "the answer": 2 words each
    assert by_purpose["backward"].input_tokens > 0
    assert usage.total().calls == 5
    assert set(usage.by_model()) == {"scripted"}
    assert "optimizer" not in by_purpose

    with track_usage() as later:
        pass
    assert later.total().calls == 0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "messages, match",
    [
        ("just a string", "messages must be"),
        ([], "messages must be"),
        ([{"role": "user"}], "'role' and 'content'"),
        (["hello"], "'role' and 'content'"),
        ([{"role": "user", "content": [123]}], "content must be"),
        ([{"role": "user", "content": [None]}], "content must be"),
        ([{"role": "user", "content": {"text": "hi"}}], "content must be"),
    ],
)
def test_bad_messages_raise_type_error(messages, match):
    model = ScriptedChatModel(forward="x")
    with pytest.raises(TypeError, match=match):
        ChatCompletion.apply(model, messages)
    assert model.calls == []


def test_unknown_message_role_raises():
    model = ScriptedChatModel(forward="x")
    with pytest.raises(ValueError, match="role"):
        ChatCompletion.apply(model, [{"role": "bot", "content": ["hi"]}])
    assert model.calls == []


@pytest.mark.parametrize(
    "inputs, match",
    [
        (["a"], "inputs must be a dict"),
        ({"x": None}, "input 'x'"),
        ({"x": {"nested": "dict"}}, "input 'x'"),
        ({"x": ["ok", object()]}, "input 'x'"),
        ({"x": True}, "input 'x'"),
        ({1: "a"}, "input names must be str"),
        ({"x": [Variable(["a", "b"])]}, "batched"),
    ],
)
def test_bad_inputs_raise_type_error(inputs, match):
    model = ScriptedChatModel(forward="x")
    with pytest.raises(TypeError, match=match):
        ChatCompletion.apply(model, [user("{x}")], inputs=inputs)
    assert model.calls == []


def test_bad_model_raises_type_error_listing_what_is_accepted():
    with pytest.raises(TypeError, match="BaseChatModel"):
        ChatCompletion.apply("gpt-4o-mini", [user("hi")])
    with pytest.raises(TypeError):
        ChatCompletion.apply(None, [user("hi")])


# --------------------------------------------------------------------------- async and loops


async def test_aapply_and_abackward():
    model = ScriptedChatModel(forward=lambda t: t[-2:], feedback="async feedback")
    system = Variable("sys", role="system instruction", requires_grad=True)
    with track_usage() as usage:
        out = await ChatCompletion.aapply(
            model,
            [{"role": "system", "content": [system]}, user("{q}")],
            inputs={"q": ["q1", "q2"]},
            backward_model=model,
        )
        assert out.data == ["q1", "q2"]
        await out.abackward("wrong")
    assert [g.data for g in system.grad] == ["async feedback", "async feedback"]
    assert usage.by_purpose()["forward"].calls == 2
    assert usage.by_purpose()["backward"].calls == 2


async def test_sync_apply_and_backward_inside_a_running_loop_keep_context():
    """Notebook style: sync entry points inside a running loop; usage scopes follow."""
    model = ScriptedChatModel(forward="answer", feedback="fb")
    system = Variable("sys", role="system instruction", requires_grad=True)
    with track_usage() as usage:
        out = ChatCompletion.apply(
            model, [{"role": "system", "content": [system]}, user("hi")], backward_model=model
        )
        out.backward("wrong")
    assert [g.data for g in system.grad] == ["fb"]
    assert usage.total().calls == 2


def test_messages_reach_the_model_as_langchain_messages():
    from langchain_core.messages import AIMessage as AI
    from langchain_core.messages import HumanMessage, SystemMessage

    model = ScriptedChatModel(forward="ok")
    ChatCompletion.apply(
        model,
        [
            {"role": "system", "content": [Variable("S")]},
            {"role": "user", "content": ["U"]},
            {"role": "assistant", "content": ["A"]},
            {"role": "user", "content": ["U2"]},
        ],
    )
    (call,) = model.calls
    assert [type(m) for m in call.messages] == [SystemMessage, HumanMessage, AI, HumanMessage]
    assert [m.content for m in call.messages] == ["S", "U", "A", "U2"]


def test_chat_model_can_be_garbage_collected_after_use():
    import gc
    import weakref

    model = ScriptedChatModel(forward="x")
    ref = weakref.ref(model)
    out = ChatCompletion.apply(model, [user("hi")])
    assert out.data == "x"
    del model
    gc.collect()
    assert ref() is None


def test_set_backward_model_rejects_unknown_objects_and_keeps_the_default():
    from afnio_langchain import get_backward_model

    good = ScriptedChatModel(feedback="x")
    set_backward_model(good)
    before = get_backward_model()
    assert before is not None
    with pytest.raises(TypeError, match="BaseChatModel"):
        set_backward_model("gpt-4o-mini")
    assert get_backward_model() is before
    set_backward_model(None)
    assert get_backward_model() is None


def test_a_failing_forward_item_raises_its_error():
    def answer(text: str) -> str:
        if "bad" in text:
            raise ValueError("item failed")
        return "ok"

    model = ScriptedChatModel(forward=answer)
    system = Variable("sys", role="system instruction", requires_grad=True)
    with pytest.raises(MinibatchError, match="item 1: ValueError: item failed") as info:
        ChatCompletion.apply(
            model,
            [{"role": "system", "content": [system]}, user("{q}")],
            inputs={"q": ["a", "bad", "c"]},
        )
    assert info.value.results == ["ok", None, "ok"]  # the other items' replies are kept
