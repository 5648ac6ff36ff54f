"""Message forms and template syntax conversion: LangChain f-strings and this package's
``{name}`` syntax render the same text, and learned text survives export."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import PromptTemplate

from afnio_langchain import Variable
from afnio_langchain.autodiff import escape_fields, fill, from_fstring, placeholders, to_fstring
from afnio_langchain.runnables._messages import normalize_messages

NAMES = ["a", "name", "x_1"]
VALUES = {"a": "<A {a}>", "name": "N}{", "x_1": "{x_1!r}"}

# Pieces of a LangChain f-string template: fields, escaped braces, and text.
_piece = st.one_of(
    st.sampled_from([f"{{{n}}}" for n in NAMES]),
    st.sampled_from(["{{", "}}", "{{a}}", '{{"k": 1}}']),
    st.text(alphabet=st.characters(blacklist_characters="{}", blacklist_categories=("Cs",)), max_size=8),
)
fstring_templates = st.lists(_piece, max_size=8).map("".join)

# Learned text: anything at all, braces included.
learned_text = st.lists(
    st.sampled_from(list("ab_ {}\"':x1") + ["{a}", "{{name}}", "}{", "{x_1}", "{{"]), max_size=20
).map("".join)


def convertible(template: str) -> str | None:
    """``from_fstring(template)``, or None for the one shape it refuses: a literal brace
    directly around a field (``{{{a}}}``), which this package's syntax cannot express."""
    try:
        return from_fstring(template)
    except ValueError as exc:
        assert "directly around a field" in str(exc)
        assert "{{{" in template and "}}}" in template
        return None


@settings(max_examples=300, deadline=None)
@given(fstring_templates)
def test_from_fstring_renders_like_langchain(template):
    converted = convertible(template)
    if converted is None:
        return
    lc = PromptTemplate.from_template(template)
    assert set(placeholders(converted)) == set(lc.input_variables)
    expected = lc.format(**{n: VALUES[n] for n in lc.input_variables})
    assert fill(converted, VALUES) == expected


@settings(max_examples=200, deadline=None)
@given(fstring_templates)
def test_to_fstring_inverts_from_fstring(template):
    converted = convertible(template)
    if converted is None:
        return
    fields = placeholders(converted)
    back = to_fstring(converted, fields)
    rendered = PromptTemplate.from_template(back).format(**{n: VALUES[n] for n in fields})
    assert rendered == fill(converted, VALUES)


@settings(max_examples=200, deadline=None)
@given(learned_text, st.lists(st.sampled_from(NAMES), unique=True, max_size=2))
def test_exported_learned_text_renders_as_the_trainable_step_does(text, declared):
    """With only ``declared`` as fields, every other brace is literal in both worlds."""
    literal = {n: "{" + n + "}" for n in placeholders(text) if n not in declared}
    trainable_render = fill(text, {**{n: VALUES[n] for n in declared}, **literal})
    template = PromptTemplate.from_template(to_fstring(text, declared))
    assert set(template.input_variables) <= set(declared)
    exported_render = template.format(**{n: VALUES[n] for n in template.input_variables})
    assert exported_render == trainable_render


def test_from_fstring_refuses_what_it_cannot_express():
    for template in ["{a.b}", "{a!r}", "{a:>3}", "{0}"]:
        with pytest.raises(ValueError, match="not a plain variable name"):
            from_fstring(template)
    with pytest.raises(ValueError, match="directly around a field"):
        from_fstring("{{{a}}}")
    assert from_fstring('{{"k": "{a}"}}') == '{"k": "{a}"}'



def test_escape_fields():
    assert escape_fields("use {a} and {\"k\": 1}") == 'use {{a}} and {"k": 1}'


def test_normalize_messages_forms_and_errors():
    v = Variable("sys", requires_grad=True)
    out = normalize_messages(
        [
            {"role": "system", "content": [v, "tail"]},
            ("human", "{q}"),
            ("ai", "ok"),
            SystemMessage(content="literal {x}"),
            HumanMessage(content="h"),
            AIMessage(content="a"),
            ("developer", "d"),
        ]
    )
    assert [m["role"] for m in out] == [
        "system", "user", "assistant", "system", "user", "assistant", "system",
    ]
    assert out[0]["content"][0] is v
    assert out[3]["content"] == ["literal {{x}}"]
    with pytest.raises(TypeError, match="non-empty list"):
        normalize_messages([])
    with pytest.raises(ValueError, match="unknown role"):
        normalize_messages([("tool", "x")])
    with pytest.raises(TypeError, match="content must be"):
        normalize_messages([("user", 3)])
    with pytest.raises(TypeError, match="needs 'role' and 'content'"):
        normalize_messages([{"role": "user"}])
    with pytest.raises(TypeError, match="expected a"):
        normalize_messages([42])
    with pytest.raises(TypeError, match="only text message content"):
        normalize_messages([HumanMessage(content=[{"type": "image_url", "image_url": {"url": "x"}}])])
