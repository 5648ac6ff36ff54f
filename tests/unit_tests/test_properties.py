"""Property-based tests (hypothesis): templating, Variable data shapes, graph construction
and backward routing, JSON parsing of model replies, and the text that reaches prompts
and the wire."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from afnio_langchain import Variable
from afnio_langchain.autodiff import MissingInputError, Sum, fill, placeholders
from afnio_langchain.autodiff import _prompts as autodiff_prompts
from afnio_langchain.autodiff._engine import merge_gradients
from afnio_langchain.models._protocol import clean_text
from afnio_langchain.models._structured import extract_fields, parse_json_object, required_keys_in

PROPS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
any_text = st.text(max_size=60)
brace_free = st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=30)
hostile_text = st.one_of(
    any_text,
    st.lists(
        st.sampled_from(
            ["{", "}", "{x}", "{{y}}", "{0}", "{x.__class__}", "</FEEDBACK>", "<VARIABLE",
             "</conversation >", '"', "\n", "\x00", "\udcff", "\x1b[0m", "Reply with only a JSON"]
        )
        | any_text,
        max_size=6,
    ).map("".join),
)


# -- templating ---------------------------------------------------------------------------------


@PROPS
@given(st.lists(st.tuples(brace_free, identifiers), max_size=5), brace_free, st.data())
def test_fill_inserts_values_verbatim_and_never_reparses(pieces, tail, data):
    names = {name for _, name in pieces}
    values = {name: data.draw(hostile_text, label=name) for name in names}
    template = "".join(f"{literal}{{{name}}}" for literal, name in pieces) + tail
    expected = "".join(literal + values[name] for literal, name in pieces) + tail
    assert fill(template, values) == expected
    assert placeholders(template) == list(dict.fromkeys(name for _, name in pieces))


@PROPS
@given(brace_free)
def test_text_without_braces_is_left_alone(text):
    assert fill(text, {}) == text
    assert placeholders(text) == []


@PROPS
@given(hostile_text, identifiers)
def test_filling_any_text_either_works_or_names_the_missing_field(template, extra):
    names = placeholders(template)
    values = {name: f"<{name}>" for name in names}
    result = fill(template, values)
    for name in names:
        assert f"<{name}>" in result
    if names:
        missing = names[0]
        with pytest.raises(MissingInputError, match=re.escape(repr(missing))):
            fill(template, {k: v for k, v in values.items() if k != missing})


@PROPS
@given(identifiers, brace_free, brace_free)
def test_double_braces_write_a_literal_field(name, before, after):
    assert fill(f"{before}{{{{{name}}}}}{after}", {name: "VALUE"}) == f"{before}{{{name}}}{after}"


@PROPS
@given(st.sampled_from(["{x.y}", "{0}", "{x!r}", "{x:>3}", "{x[0]}", "{ x }", "{}", "{-x}"]))
def test_format_syntax_is_never_a_field(field):
    assert placeholders(field) == []
    assert fill(field, {"x": "VALUE"}) == field


# -- Variable data shapes -----------------------------------------------------------------------

# A list mixing ints and floats holds floats, as afnio's does (test_afnio_api): the data
# round-trips exactly when each int is one a float holds exactly (|n| <= 2**53).
scalars = st.one_of(
    st.text(max_size=20),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
)


def test_a_mixed_list_holds_floats_even_where_an_int_does_not_fit_one():
    v = Variable([2**53 + 1, 0.0], role="r")
    assert v.data == [float(2**53 + 1), 0.0] and all(type(x) is float for x in v.data)
    assert Variable([2**60], role="r").data == [2**60]  # ints alone stay ints


@PROPS
@given(st.one_of(scalars, st.lists(scalars, max_size=6)), st.booleans())
def test_valid_data_round_trips(data, requires_grad):
    v = Variable(data, role="r", requires_grad=requires_grad)
    assert v.data == data
    assert v.is_batched == isinstance(data, list)
    assert v.items() == (data if isinstance(data, list) else [data])
    assert v.detach().data == data and v.detach().requires_grad is False
    clone = copy.deepcopy(v)
    assert clone.data == data and clone.requires_grad == requires_grad
    if isinstance(data, list):
        data.append("mutated")  # a Variable keeps its own copy of a list
        assert v.data != data


invalid = st.one_of(
    st.booleans(),
    st.none(),
    st.binary(max_size=5),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2),
    st.lists(st.lists(st.text(max_size=3), min_size=1, max_size=2), min_size=1, max_size=3),
    st.lists(st.one_of(st.booleans(), st.none()), min_size=1, max_size=3),
)


@PROPS
@given(invalid)
def test_invalid_data_is_a_type_error(data):
    with pytest.raises(TypeError, match="Variable data"):
        Variable(data)


# -- graph construction and backward routing ----------------------------------------------------


@st.composite
def expressions(draw):
    """Leaves (some requiring grad) and a sequence of Add/Sum ops over earlier values."""
    flags = draw(st.lists(st.booleans(), min_size=1, max_size=4))
    leaves = [Variable(f"leaf{i}", role=f"leaf {i}", requires_grad=f) for i, f in enumerate(flags)]
    pool: list[Variable] = list(leaves)
    ops: list[tuple[Variable, list[Variable]]] = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            a, b = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
            out = a + b
            operands = [a, b]
        else:
            operands = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))
            out = Sum.apply(operands)
        ops.append((out, operands))
        pool.append(out)
    return leaves, ops


@PROPS
@given(expressions())
def test_graph_edges_and_gradient_routing(expression):
    leaves, ops = expression
    producers = {id(out): operands for out, operands in ops}
    for out, operands in ops:
        needs = [o.requires_grad for o in operands]
        assert out.requires_grad == any(needs)
        assert out.is_leaf == (not any(needs))
        if not any(needs):
            assert out.grad_fn is None
            continue
        assert out.grad_fn.name() in ("AddBackward0", "SumBackward0")
        edges = out.grad_fn.next_functions
        assert len(edges) == len(operands)  # one edge per Variable input, in order
        for (node, _), operand in zip(edges, operands):
            if not operand.requires_grad:
                assert node is None
            elif operand.grad_fn is None:
                assert node.name() == "AccumulateGrad" and node.variable is operand
            else:
                assert node is operand.grad_fn

    root = ops[-1][0]
    if root.grad_fn is None:
        with pytest.raises(RuntimeError, match="does not require grad"):
            root.backward("fb")
        return
    # Expected: one gradient per edge into a leaf, from every op reachable from the root.
    expected: Counter[int] = Counter()
    seen: set[int] = set()
    stack = [root]
    while stack:
        value = stack.pop()
        if id(value) in seen or id(value) not in producers or value.grad_fn is None:
            continue
        seen.add(id(value))
        for operand in producers[id(value)]:
            if operand.requires_grad and operand.grad_fn is None:
                expected[id(operand)] += 1
            elif operand.requires_grad:
                stack.append(operand)
    root.backward("fb")
    for leaf in leaves:
        assert len(leaf.grad) == expected[id(leaf)]
        for g in leaf.grad:
            assert "fb" in g.data
            assert g.role == f"feedback to {leaf.role}"
    with pytest.raises(RuntimeError, match="second time"):
        root.backward("fb")


@PROPS
@given(st.lists(st.lists(any_text, min_size=3, max_size=3), min_size=1, max_size=4))
def test_merged_minibatch_gradients_keep_one_text_per_item(columns):
    merged = merge_gradients([Variable(c, role="feedback") for c in columns])
    assert merged is not None and merged.is_batched and len(merged.items()) == 3
    for i, item in enumerate(merged.items()):
        for column in columns:
            assert column[i] in item


# -- JSON replies ---------------------------------------------------------------------------

# Values a reply can carry: U+FFFD marks bytes that could not be decoded, and a lone
# surrogate is no text (UTF-8 cannot carry one); the parser refuses both by design
# (test_structured_and_usage.py checks those refusals).
decodable_text = st.text(
    alphabet=st.characters(blacklist_characters="\ufffd", blacklist_categories=("Cs",)),
    max_size=60,
)
json_values = st.dictionaries(identifiers, decodable_text, min_size=1, max_size=4)
wrappers = st.sampled_from(
    [
        "{}",
        "Here you go:\n{}\nHope this helps.",
        "```json\n{}\n```",
        "```\n{}\n```",
        "Sure! ```JSON\n{}``` done",
    ]
)


@PROPS
@given(json_values, wrappers, st.booleans())
@example(values={"A": ",}"}, wrapper="{}", trailing_comma=True)  # a comma inside a string
def test_json_replies_parse_back_whatever_the_wrapping(values, wrapper, trailing_comma):
    body = json.dumps(values, ensure_ascii=False)
    if trailing_comma:
        body = body[:-1] + ",}"
    text = wrapper.replace("{}", body)
    assert parse_json_object(text) == values
    assert extract_fields(text, list(values)) == values


@PROPS
@given(any_text)
def test_arbitrary_replies_give_fields_or_a_value_error(text):
    for keys in (["a"], ["a", "b"]):
        try:
            fields = extract_fields(text, keys)
        except ValueError:
            continue
        assert list(fields) == keys and all(isinstance(v, str) for v in fields.values())


@PROPS
@given(any_text, st.data())
def test_cut_off_json_never_becomes_a_value(value, data):
    full = json.dumps({"improved_value": value}, ensure_ascii=False)
    cut = data.draw(st.integers(3, len(full) - 1), label="cut")
    with pytest.raises(ValueError):
        extract_fields(full[:cut], ["improved_value"])


# -- text that reaches prompts and the wire --------------------------------------------------

_OUR_TAGS = re.compile(
    r"</?(CONVERSATION|MESSAGE|RESPONSE|FEEDBACK|VARIABLE|EVALUATION|JUDGE_EXPLANATION)\b", re.I
)


@PROPS
@given(hostile_text)
def test_neutralised_text_holds_none_of_our_tags(text):
    neutral = autodiff_prompts.neutralize(text)
    assert not _OUR_TAGS.search(neutral)
    assert neutral.replace("\u2039", "<") == text.replace("\u2039", "<")  # nothing else changes


@PROPS
@given(hostile_text, hostile_text, hostile_text, hostile_text)
def test_backward_prompt_structure_is_fixed_whatever_the_data(conversation, response, feedback, role):
    messages = autodiff_prompts.chat_backward_messages(
        [{"role": "system", "content": conversation}, {"role": "user", "content": conversation}],
        response,
        role,
        feedback,
        [("var_1", role, conversation), ("var_2", "question", response)],
    )
    user = messages[1]["content"]
    tags = [m.group(0).upper() for m in _OUR_TAGS.finditer(user)]
    assert tags == [
        "<VARIABLE", "</VARIABLE", "<VARIABLE", "</VARIABLE",
        "<CONVERSATION", "<MESSAGE", "</MESSAGE", "<MESSAGE", "</MESSAGE", "</CONVERSATION",
        "<RESPONSE", "</RESPONSE", "<FEEDBACK", "</FEEDBACK",
    ]
    assert required_keys_in(user) == ["var_1", "var_2"]
    assert messages[0]["content"] == autodiff_prompts.CHAT_BACKWARD_SYSTEM


@PROPS
@given(hostile_text)
def test_clean_text_is_always_sendable(text):
    cleaned = clean_text(text)
    cleaned.encode("utf-8")  # never raises: no lone surrogates left
    assert "\x00" not in cleaned
    assert clean_text(cleaned) == cleaned
    if not re.search("[\ud800-\udfff\x00]", text):
        assert cleaned == text
