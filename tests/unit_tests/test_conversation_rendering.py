"""How messages and inputs render into the conversation a model receives, and which
Variables feed it (the slots that route gradients back), for the usual call (text
inputs, list content) that ``build_conversation`` renders in one pass, and for the
shapes it leaves to its checked path."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afnio_langchain import Variable
from afnio_langchain.autodiff import MissingInputError, _conversation, build_conversation


def test_fields_literals_and_parts_render_as_written():
    system = Variable("Translate to {language}. Reply as {{json}}.", role="system",
                      requires_grad=True)
    word = Variable("dog", role="word")
    conversation = build_conversation(
        [{"role": "system", "content": [system, "Be brief."]},
         {"role": "user", "content": ["{word}"]}],
        inputs={"language": "Italian", "word": word},
    )
    assert conversation.items == [[
        {"role": "system", "content": "Translate to Italian. Reply as {json}.\nBe brief."},
        {"role": "user", "content": "dog"},
    ]]
    assert not conversation.batched
    assert [s.variable for s in conversation.slots] == [system, word]  # messages, then inputs


def test_a_filled_value_is_never_parsed_again():
    conversation = build_conversation(
        [{"role": "user", "content": ["{a} and {b}"]}], inputs={"a": "{b}", "b": "B"}
    )
    assert conversation.items[0][0]["content"] == "{b} and B"


def test_a_missing_input_names_the_message_that_uses_it():
    with pytest.raises(MissingInputError, match=r"message 1 \(user\) uses \{word\}"):
        build_conversation(
            [{"role": "system", "content": ["Hi"]}, {"role": "user", "content": ["{word}"]}],
            inputs={"other": "x"},
        )


def test_unusual_shapes_render_too():
    number = Variable(3, role="count")
    bare = Variable("Count to {n}.", role="prompt", requires_grad=True)
    conversation = build_conversation(
        (OrderedDict(role="system", content=bare), {"role": "user", "content": "{n}"}),
        inputs=OrderedDict(n=number),
    )
    assert conversation.items == [[
        {"role": "system", "content": "Count to 3."},
        {"role": "user", "content": "3"},
    ]]
    assert [s.variable for s in conversation.slots] == [bare, number]


def test_list_inputs_make_a_minibatch():
    conversation = build_conversation(
        [{"role": "user", "content": ["{w}"]}], inputs={"w": ["a", Variable("b")]}
    )
    assert conversation.batched and conversation.size == 2
    assert [item[0]["content"] for item in conversation.items] == ["a", "b"]


@pytest.mark.parametrize(
    ("messages", "inputs", "error"),
    [
        ([], None, TypeError),
        ([{"role": "robot", "content": ["hi"]}], None, ValueError),
        ([{"role": "user"}], None, TypeError),
        ([{"role": "user", "content": [3]}], None, TypeError),
        ([{"role": "user", "content": ["{x}"]}], {"x": object()}, TypeError),
        ([{"role": "user", "content": ["{x}"]}], {1: "x"}, TypeError),
    ],
)
def test_wrong_shapes_are_refused_with_the_checked_paths_errors(messages, inputs, error):
    with pytest.raises(error):
        build_conversation(messages, inputs)


_texts = st.sampled_from(["plain", "{a}", "{b} then {a}", "{{a}} literal", "{a}{a}", "", "{"])
_parts = st.lists(
    st.one_of(_texts, _texts.map(lambda t: Variable(t, role="part"))), min_size=1, max_size=3
)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": _parts}
    ),
    min_size=1,
    max_size=3,
)
_values = st.one_of(st.sampled_from(["x", "{a}", "y z"]),
                    st.sampled_from(["v", "{b}"]).map(lambda t: Variable(t, role="input")))


@settings(max_examples=200, deadline=None)
@given(messages=_messages, inputs=st.dictionaries(st.sampled_from(["a", "b"]), _values))
def test_the_one_pass_render_matches_the_checked_render(messages, inputs):
    checked = _conversation._check_messages(messages)
    values = _conversation._check_inputs(inputs)
    try:
        expected = [_conversation._render(checked, values, 0)]
    except MissingInputError:
        with pytest.raises(MissingInputError):
            build_conversation(messages, inputs)
        return
    conversation = build_conversation(messages, inputs)
    assert conversation.items == expected
    variables = [p for m in messages for p in m["content"] if isinstance(p, Variable)]
    variables += [v for v in inputs.values() if isinstance(v, Variable)]
    assert [s.variable for s in conversation.slots] == variables
