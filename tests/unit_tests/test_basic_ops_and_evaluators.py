"""Basic text ops (Add, Sum, Split) and evaluators (exact match, deterministic, LM judge)."""

from __future__ import annotations

import asyncio

import pytest

from afnio_langchain import Variable
from afnio_langchain.autodiff import (
    Add,
    BackwardError,
    ChatCompletion,
    DeterministicEvaluator,
    ExactMatchEvaluator,
    LMJudgeEvaluator,
    Split,
    Sum,
    TextTransform,
    run_backward,
)
from afnio_langchain.testing import ScriptedChatModel

# --------------------------------------------------------------------------- Add


def via_add(role, feedback):
    """Feedback as Add, Sum and Split pass it to an input (afnio's wording)."""
    return f"Here is the combined feedback we got for this specific {role} and other variables: {feedback}"


def test_add_concatenates_and_joins_roles():
    x = Variable("Be brief.", role="rule", requires_grad=True)
    y = Variable(" Use French.", role="language rule", requires_grad=True)
    z = x + y
    assert z.data == "Be brief. Use French."
    assert z.role == "rule and language rule"
    assert z.grad_fn.name() == "AddBackward0"
    z.backward("too terse")
    assert [g.data for g in x.grad] == [via_add("rule", "too terse")]
    assert [g.data for g in y.grad] == [via_add("language rule", "too terse")]
    assert x.grad[0].role == "feedback to rule"
    assert y.grad[0].role == "feedback to language rule"


def test_add_with_a_str_and_apply_form():
    x = Variable("Hello", role="greeting", requires_grad=True)
    z = x + ", world"
    assert z.data == "Hello, world"
    assert z.role == "greeting"  # the str has no role
    w = Add.apply(x, Variable("!", role="bang"))
    assert w.data == "Hello!"
    assert w.role == "greeting and bang"
    z.backward("f")
    assert [g.data for g in x.grad] == [via_add("greeting", "f")]


def test_add_adds_numbers_and_writes_a_number_next_to_text_as_text():
    assert (Variable(2) + Variable(3)).data == 5
    assert (Variable([1, 2, 3]) + Variable([4, 5, 6])).data == [5, 7, 9]
    assert (Variable([1.5, 2]) + Variable([1, 1])).data == [2.5, 3.0]
    assert (Variable("n=") + Variable(3)).data == "n=3"
    assert (Variable(["a", "b"]) + Variable([1, 2])).data == ["a1", "b2"]


def test_str_plus_variable_is_a_type_error_so_stream_aggregation_adds_no_node():
    # LangChain adds streamed chunks with `+`; a str chunk followed by the final Variable
    # must not create an Add node (the aggregator falls back on TypeError).
    x = Variable("world", role="noun", requires_grad=True)
    with pytest.raises(TypeError):
        "Hello, " + x  # noqa: B018
    assert (Variable("Hello, ") + x).data == "Hello, world"


def test_add_rejects_other_types():
    x = Variable("a")
    for bad in (1, None, ["a"]):
        with pytest.raises(TypeError):
            x + bad  # noqa: B018


def test_add_broadcasts_a_scalar_over_a_minibatch():
    items = Variable(["one", "two"], role="items", requires_grad=True)
    suffix = Variable("!", role="suffix", requires_grad=True)
    z = items + suffix
    assert z.data == ["one!", "two!"]
    z.backward(["loud", ""])
    assert [g.data for g in items.grad] == [[via_add("items", "loud"), ""]]  # no feedback stays none
    (g,) = suffix.grad
    assert g.data == via_add("suffix", "<ITEM>loud</ITEM><ITEM></ITEM>")
    assert (Variable("<") + Variable(["a", "b"])).data == ["<a", "<b"]


def test_add_rejects_minibatches_of_different_sizes():
    with pytest.raises(ValueError):
        Variable(["a", "b"]) + Variable(["a", "b", "c"])  # noqa: B018


def test_in_place_add_keeps_the_variable_and_records_the_node():
    a = Variable("foo", role="a", requires_grad=True)
    same = a
    a += Variable("bar", role="b")
    assert a is same and a.data == "foobar" and a.role == "a and b"
    assert a.grad_fn is not None and a.grad_fn.name() == "AddBackward0"
    out = a + "!"
    out.backward("louder")
    a.retain_grad()  # a is now the Add's output; its value before the add got the feedback
    assert a._grad == [a._grad[0]] and "louder" in a._grad[0].data
    plain = Variable("x")
    plain += Variable("y")
    assert plain.data == "xy" and plain.grad_fn is None


# --------------------------------------------------------------------------- Sum


def test_sum_wraps_texts_and_passes_feedback_to_every_input():
    a = Variable("first", role="x", requires_grad=True)
    b = Variable("second", role="y")
    c = Variable("third", role="z", requires_grad=True)
    s = Sum.apply([a, b, c])
    assert s.data == "<ITEM>first</ITEM><ITEM>second</ITEM><ITEM>third</ITEM>"
    assert s.role == "x and y and z"
    assert Sum.apply([a, b], separator=" | ").data == "first | second"
    s.backward("too long")
    assert [g.data for g in a.grad] == [via_add("x", "too long")]
    assert [g.data for g in c.grad] == [via_add("z", "too long")]
    assert b.grad == []


def test_sum_adds_numbers_item_by_item():
    assert Sum.apply([Variable(1), Variable(2.5), Variable(3)]).data == 6.5
    assert Sum.apply([Variable([1, 2]), Variable([10, 20]), Variable([100, 200])]).data == [111, 222]
    assert Sum.apply([Variable(["a", "b"]), Variable(["c", "d"])]).data == [
        "<ITEM>a</ITEM><ITEM>c</ITEM>",
        "<ITEM>b</ITEM><ITEM>d</ITEM>",
    ]


def test_sum_validates_its_input():
    with pytest.raises(TypeError):
        Sum.apply(Variable("a"))
    with pytest.raises(TypeError):
        Sum.apply([Variable("a"), "b"])
    with pytest.raises(ValueError):
        Sum.apply([])
    with pytest.raises(TypeError):
        Sum.apply([Variable("a")], separator=3)


# --------------------------------------------------------------------------- Split


def test_split_is_a_multi_output_node():
    x = Variable("a|b|c", role="pair", requires_grad=True)
    first, rest = Split.apply(x, "|", 1)
    assert (first.data, rest.data) == ("a", "b|c")
    assert (first.role, rest.role) == ("split part 0 of pair", "split part 1 of pair")
    assert first.grad_fn is rest.grad_fn
    assert first.grad_fn.name() == "SplitBackward0"
    assert (first.output_nr, rest.output_nr) == (0, 1)
    assert len(Split.apply(x, "|")) == 3
    assert [v.data for v in Split.apply(x, Variable("|"), Variable(1))] == ["a", "b|c"]


def test_split_gathers_feedback_on_its_parts_into_one_gradient():
    x = Variable("a|b", role="pair", requires_grad=True)
    first, second = Split.apply(x, "|")
    asyncio.run(run_backward([(first, "first is wrong"), (second, "second is wrong")]))
    (g,) = x.grad  # one node run, one gathered gradient
    assert g.data == via_add("pair", "<ITEM>first is wrong</ITEM><ITEM>second is wrong</ITEM>")
    assert g.role == "feedback to pair"


def test_split_feedback_through_a_downstream_join():
    x = Variable("a|b", role="pair", requires_grad=True)
    first, second = Split.apply(x, "|")
    upper = TextTransform.apply(first, str.upper, "uppercasing")
    joined = Sum.apply([upper, second])
    joined.backward("bad")
    (g,) = x.grad
    assert "uppercasing" in g.data and g.data.count("<ITEM>") == 2
    assert via_add("split part 1 of pair", "bad") in g.data


def test_split_only_one_part_used():
    x = Variable("a|b", role="pair", requires_grad=True)
    _, second = Split.apply(x, "|")
    (second + "!").backward("fix b")
    inner = via_add("split part 1 of pair", "fix b")
    assert [g.data for g in x.grad] == [via_add("pair", f"<ITEM></ITEM><ITEM>{inner}</ITEM>")]


def test_split_of_a_minibatch_pads_short_splits_and_keeps_feedback_per_item():
    x = Variable(["a b c", "d e"], role="lines", requires_grad=True)
    parts = Split.apply(x, " ")
    assert [p.data for p in parts] == [["a", "d"], ["b", "e"], ["c", ""]]
    parts[2].backward(["c is wrong", ""])
    (g,) = x.grad
    assert g.data == [via_add("lines", "<ITEM></ITEM><ITEM></ITEM><ITEM>c is wrong</ITEM>"), ""]


def test_split_validates_its_input():
    with pytest.raises(TypeError):
        Split.apply("a b")
    with pytest.raises(TypeError):
        Split.apply(Variable([1, 2]), " ")
    with pytest.raises(TypeError):
        Split.apply(Variable("a b"), 3)


# --------------------------------------------------------------------------- evaluators


def _pipeline(answers: dict[str, str], questions: list[str]):
    """system prompt -> ChatCompletion over a minibatch of questions."""
    forward = ScriptedChatModel(
        forward=lambda t: next(a for q, a in answers.items() if q in t),
        feedback="The system prompt should demand the exact answer.",
    )
    system = Variable("Answer the question.", role="system instruction", requires_grad=True)
    messages = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [Variable("{question}", role="question template")]},
    ]
    response = ChatCompletion.apply(
        forward, messages, inputs={"question": questions}, backward_model=forward
    )
    return forward, system, response


def exact_match_explanation(prediction, target, score):
    return (
        "The evaluation function, designed for 'exact match', compared the <DATA> field of the "
        f"predicted variable ('{prediction}') with the <DATA> field of the target variable "
        f"('{target}'), resulting in a score: {score}."
    )


def test_exact_match_scores_and_explains():
    prediction = Variable(["Paris", " rome ", "Berlin"], role="answer")
    score, explanation = ExactMatchEvaluator.apply(prediction, ["Paris", "Rome", "Madrid"])
    assert score.data == 1  # afnio's default: the minibatch's scores summed
    assert "aggregated using the reduction function 'summation'" in explanation.data
    assert "final aggregated score: 1." in explanation.data

    score, explanation = ExactMatchEvaluator.apply(
        prediction, ["Paris", "Rome", "Madrid"], reduction_fn=None
    )
    assert score.data == [1, 0, 0]
    assert explanation.data[2] == exact_match_explanation("Berlin", "Madrid", 0)
    assert score.role.endswith("score") and explanation.role.endswith("explanation")

    score, _ = ExactMatchEvaluator.apply(
        prediction, ["paris", "ROME", "x"], reduction_fn=None, case_sensitive=False
    )
    assert score.data == [1, 1, 0]

    single, why = ExactMatchEvaluator.apply(Variable("Paris", role="answer"), "Rome")
    assert single.data == 0
    assert why.data == exact_match_explanation("Paris", "Rome", 0)


def test_explanation_backward_needs_no_argument_and_reaches_the_system_prompt():
    forward, system, response = _pipeline(
        {"capital of France": "Paris", "capital of Italy": "Milan"},
        ["capital of France", "capital of Italy"],
    )
    score, explanation = ExactMatchEvaluator.apply(response, ["Paris", "Rome"], backward_model=forward)
    assert score.data == 1
    assert explanation.requires_grad and explanation.grad_fn is not None

    explanation.backward()

    calls = forward.calls_of("backward")
    assert len(calls) == 2, "one call writes the evaluator's feedback, one the prompt's; none for France"
    evaluator_call, prompt_call = calls
    assert "Milan" in evaluator_call.text and "Rome" in evaluator_call.text
    assert "Paris" not in evaluator_call.text
    assert "capital of Italy" in prompt_call.text and "capital of France" not in prompt_call.text
    assert [g.data for g in system.grad] == ["The system prompt should demand the exact answer."]


def test_all_items_correct_makes_no_backward_call():
    forward, system, response = _pipeline({"q1": "A", "q2": "B"}, ["q1", "q2"])
    _, explanation = ExactMatchEvaluator.apply(response, ["A", "B"])
    explanation.backward()
    assert forward.calls_of("backward") == []
    assert system.grad == []


def test_deterministic_evaluator_with_feedback_text_and_success_fn():
    def eval_fn(prediction: str, target: str):
        if prediction == target:
            return 1.0, "spot on"
        return 0.4, f"close but {prediction!r} is not {target!r}"

    prediction = Variable(["a", "b", "c"], role="guess", requires_grad=True)
    score, explanation = DeterministicEvaluator.apply(prediction, ["a", "x", "y"], eval_fn)
    assert score.data == [1.0, 0.4, 0.4]
    assert explanation.data == ["spot on", "close but 'b' is not 'x'", "close but 'c' is not 'y'"]
    explanation.backward()
    (g,) = prediction.grad
    assert g.data == ["", "close but 'b' is not 'x'", "close but 'c' is not 'y'"]
    assert g.role == "feedback to guess"

    lenient = Variable(["a", "b"], role="guess", requires_grad=True)
    _, why = DeterministicEvaluator.apply(
        lenient, ["a", "x"], eval_fn, success_fn=lambda s: s >= 0.3
    )
    why.backward()
    assert lenient.grad == []  # every item passes success_fn: nothing to fix


def test_deterministic_evaluator_target_may_be_none_and_eval_fn_may_return_bool():
    coach = ScriptedChatModel(feedback="Say it in under five characters.")
    prediction = Variable("hello world", role="text", requires_grad=True)
    score, why = DeterministicEvaluator.apply(
        prediction, None, lambda p, t: len(p) < 5, "brevity", backward_model=coach
    )
    assert score.data == 0
    assert "designed for 'brevity'" in why.data and "('hello world')" in why.data
    why.backward()
    assert [g.data for g in prediction.grad] == ["Say it in under five characters."]
    (call,) = coach.calls_of("backward")
    assert "brevity" in call.text and "hello world" in call.text


def test_deterministic_evaluator_reduces_a_minibatch_and_keeps_feedback_per_item():
    def eval_fn(prediction, target):
        return (1, "") if prediction == target else (0, f"{prediction} should be {target}")

    prediction = Variable(["a", "b", "c"], role="guess", requires_grad=True)
    score, why = DeterministicEvaluator.apply(
        prediction, ["a", "x", "c"], eval_fn, "letters", reduction_fn=sum,
        reduction_fn_purpose="count of right letters",
    )
    assert score.data == 2
    assert "'count of right letters'" in why.data and "final aggregated score: 2." in why.data
    why.backward()
    assert [g.data for g in prediction.grad] == [["", "b should be x", ""]]


def test_evaluators_reject_a_missing_backward_model_by_name():
    prediction = Variable("x", role="guess", requires_grad=True)
    _, why = ExactMatchEvaluator.apply(prediction, "y")
    with pytest.raises(BackwardError, match="set_backward_model"):
        why.backward()


def test_evaluator_validates_arguments():
    with pytest.raises(TypeError):
        DeterministicEvaluator.apply("not a variable", "t", lambda p, t: True)
    with pytest.raises(TypeError):
        DeterministicEvaluator.apply(Variable("p"), "t", "not callable")
    with pytest.raises(ValueError):
        ExactMatchEvaluator.apply(Variable(["a", "b"]), ["a", "b", "c"])


def test_plain_outputs_still_need_feedback():
    forward, _, response = _pipeline({"q": "A"}, ["q"])
    with pytest.raises(RuntimeError):
        response.backward()


def test_lm_judge_parses_fraction_scores_and_backpropagates():
    def verdict(text: str) -> str:
        if "GOOD ANSWER" in text:
            return '{"score": "10/10", "explanation": "Perfect."}'
        return '{"score": "8/10", "explanation": "Too long, trim it."}'

    judge = ScriptedChatModel(judge=verdict, feedback="Make the answer shorter.")
    answers = Variable(["GOOD ANSWER", "a long rambling answer"], role="answer", requires_grad=True)
    messages = [{"role": "user", "content": [Variable("Rate this: {prediction}", role="rubric")]}]
    score, explanation = LMJudgeEvaluator.apply(
        judge, messages, inputs={"prediction": answers}, backward_model=judge, reduction_fn=None
    )
    assert score.data == [1.0, 0.8]
    assert explanation.data == ["Perfect.", "Too long, trim it."]
    assert [c.kind for c in judge.calls] == ["judge", "judge"]

    explanation.backward()
    backward_calls = judge.calls_of("backward")
    assert len(backward_calls) == 1
    assert "Too long, trim it." in backward_calls[0].text
    assert "a long rambling answer" in backward_calls[0].text
    (g,) = answers.grad
    assert g.data == ["", "Make the answer shorter."]


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('{"score": 0, "explanation": "no"}', 0.0),
        ('{"score": "7 / 10", "explanation": "meh"}', 0.7),
        ('```json\n{"score": "0.5", "explanation": "half"}\n```', 0.5),
        ('{"score": "true", "explanation": "yes"}', 1.0),
    ],
)
def test_lm_judge_score_formats(reply, expected):
    judge = ScriptedChatModel(judge=reply)
    score, _ = LMJudgeEvaluator.apply(
        judge, [{"role": "user", "content": ["Rate {p}"]}], inputs={"p": "x"}
    )
    assert score.data == pytest.approx(expected)


def test_lm_judge_success_skips_the_llm_in_backward():
    judge = ScriptedChatModel(judge='{"score": 1, "explanation": "Great."}', feedback="unused")
    answer = Variable("fine answer", role="answer", requires_grad=True)
    _, explanation = LMJudgeEvaluator.apply(
        judge, [{"role": "user", "content": ["Rate {p}"]}], inputs={"p": answer},
        backward_model=judge,
    )
    explanation.backward()
    assert judge.calls_of("backward") == []
    assert answer.grad == []


def test_lm_judge_custom_success_fn_and_upstream_chat_completion():
    forward, system, response = _pipeline({"q1": "short", "q2": "a long long answer"}, ["q1", "q2"])

    def verdict(text: str) -> str:
        if "a long long answer" in text:
            return '{"score": 3, "explanation": "Way too wordy."}'
        return '{"score": 9, "explanation": "Good."}'

    judge = ScriptedChatModel(judge=verdict, feedback="Answer in one word.")
    _, explanation = LMJudgeEvaluator.apply(
        judge,
        [{"role": "user", "content": ["Rate 0-10: {prediction}"]}],
        inputs={"prediction": response},
        success_fn=lambda s: s >= 7,
        backward_model=judge,
    )
    explanation.backward()
    assert len(judge.calls_of("backward")) == 1
    upstream = forward.calls_of("backward")
    assert len(upstream) == 1
    assert "q2" in upstream[0].text and "Answer in one word." in upstream[0].text
    assert [g.data for g in system.grad] == ["The system prompt should demand the exact answer."]
