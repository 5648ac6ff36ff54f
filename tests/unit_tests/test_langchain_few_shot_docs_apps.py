"""Few-shot chat prompts written as LangChain's documentation writes them, made trainable
as they are: the system prompt trains, the examples stay as written, and the exported
chain sends the learned system prompt before the same examples.

The app is adapted from LangChain's how-to guide "How to use few shot examples in chat
models" (python.langchain.com/docs/how_to/few_shot_examples_chat, MIT licence): its
fixed examples, its example prompt and its final prompt, with a scripted model in place
of the guide's chat model.
"""

from __future__ import annotations

import pytest
from langchain_core.example_selectors import LengthBasedExampleSelector
from langchain_core.prompts import (
    ChatPromptTemplate,
    FewShotChatMessagePromptTemplate,
    PromptTemplate,
)

from afnio_langchain import make_trainable
from afnio_langchain.testing import ScriptedChatModel

EXAMPLES = [
    {"input": "2 🦜 2", "output": "4"},
    {"input": "2 🦜 3", "output": "5"},
]


def _guide_prompt(**few_shot: object) -> ChatPromptTemplate:
    example_prompt = ChatPromptTemplate.from_messages([("human", "{input}"), ("ai", "{output}")])
    few_shot_prompt = FewShotChatMessagePromptTemplate(example_prompt=example_prompt, **few_shot)
    return ChatPromptTemplate.from_messages(
        [
            ("system", "You are a wondrous wizard of math."),
            few_shot_prompt,
            ("human", "{input}"),
        ]
    )


def _sent(model: ScriptedChatModel) -> list[tuple[str, str]]:
    return [(m.type, m.content) for m in model.calls[-1].messages]


def test_the_guides_few_shot_chain_trains_its_system_prompt_and_keeps_the_examples():
    model = ScriptedChatModel(forward="4", feedback="Say that 🦜 means addition.")
    original = _guide_prompt(examples=EXAMPLES) | model
    expected_examples = [("human", "2 🦜 2"), ("ai", "4"), ("human", "2 🦜 3"), ("ai", "5")]

    chain = make_trainable(original, backward_model=model)
    (system,) = chain.parameters()  # the examples are data: only the instruction trains
    assert system.data == "You are a wondrous wizard of math."
    assert system.role == "system prompt"
    assert list(chain.named_prompts()) == ["prompt_0.message_0"]

    answer = chain.invoke({"input": "What is 2 🦜 9?"})
    assert answer.data == "4"
    assert _sent(model) == [
        ("system", "You are a wondrous wizard of math."),
        *expected_examples,
        ("human", "What is 2 🦜 9?"),
    ]
    answer.backward("Wrong: 2 🦜 9 is 11.")
    assert [g.data for g in system.grad] == ["Say that 🦜 means addition."]

    system.data = "🦜 is addition {as in the examples}."
    exported = chain.to_langchain()
    assert isinstance(exported.first.messages[1], FewShotChatMessagePromptTemplate)
    assert exported.invoke({"input": "What is 2 🦜 9?"}).content == "4"
    assert _sent(model) == [
        ("system", "🦜 is addition {as in the examples}."),
        *expected_examples,
        ("human", "What is 2 🦜 9?"),
    ]
    # The original chain is left as it was.
    assert original.invoke({"input": "x"}) and _sent(model)[0][1] == (
        "You are a wondrous wizard of math."
    )


def test_braces_in_an_example_reach_the_model_as_written():
    model = ScriptedChatModel(forward="ok")
    examples = [{"input": "Give {name} as JSON", "output": '{"name": "Ada"}'}]
    chain = make_trainable(_guide_prompt(examples=examples) | model)
    chain.invoke({"input": "Give {city} as JSON"})
    assert _sent(model)[1:] == [
        ("human", "Give {name} as JSON"),
        ("ai", '{"name": "Ada"}'),
        ("human", "Give {city} as JSON"),
    ]


def test_trained_user_messages_keep_their_positions_after_the_examples():
    model = ScriptedChatModel(forward="ok")
    chain = make_trainable(_guide_prompt(examples=EXAMPLES) | model, roles=("system", "user"))
    system, user = chain.parameters()
    assert list(chain.named_prompts()) == ["prompt_0.message_0", "prompt_0.message_2"]
    assert user.role == "user prompt (a template: keep {input} as written)"
    user.data = "Question: {input}"
    exported = chain.to_langchain()
    exported.invoke({"input": "2 🦜 4?"})
    assert _sent(model)[-1] == ("human", "Question: 2 🦜 4?")
    assert len(_sent(model)) == 6


def test_examples_picked_per_input_are_refused_with_the_way_on():
    example_prompt = PromptTemplate.from_template("{input} -> {output}")
    selector = LengthBasedExampleSelector(examples=EXAMPLES, example_prompt=example_prompt)
    prompt = _guide_prompt(example_selector=selector, input_variables=["input"])
    with pytest.raises(ValueError, match=r"example_selector.*fixed examples \(examples=\[\.\.\.\]\)"):
        make_trainable(prompt | ScriptedChatModel(forward="ok"))
