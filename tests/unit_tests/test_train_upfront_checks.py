"""What fit, evaluate and the command line refuse, and when: a metric score outside
[0, 1] (fit, evaluate, the CLI), no model to write the feedback (before any model
call, where the chain shows it; chains that train, dict outputs among them, pass), and
the progress bar of evaluate (shown on stderr, turned off like fit's). Hermetic: ScriptedChatModel
and the loopback OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import json
import textwrap
from operator import itemgetter

import pytest
from langchain_core.output_parsers import JsonOutputParser, StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel

from afnio_langchain import (
    ChatCompletionRunnable,
    Variable,
    make_trainable,
    set_backward_model,
    use_backward_model,
)
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.cli import main
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import (
    MetricResult,
    MetricScoreError,
    Trainer,
    TrainingError,
    evaluate,
    exact_match,
    fit,
)

DATA = [{"question": f"q{i}", "answer": "4"} for i in range(3)]


def scripted(**scripts):
    scripts.setdefault("forward", lambda text: "4" if "digits" in text else "four")
    scripts.setdefault("feedback", "Ask for digits.")
    scripts.setdefault("optimizer", "Answer with digits.")
    return ScriptedChatModel(**scripts)


def qa_step(model, **options):
    system = Variable("Answer the question.", role="system prompt", requires_grad=True)
    return ChatCompletionRunnable(
        model=model, messages=[("system", system), ("user", "{question}")], **options
    ), system


def qa_prompt():
    return ChatPromptTemplate.from_messages([("system", "Answer the question."), ("human", "{question}")])


@pytest.fixture(autouse=True)
def no_process_backward_model():
    set_backward_model(None)
    yield
    set_backward_model(None)


# ------------------------------------------------------------ 1. metric scores in [0, 1]


@pytest.mark.parametrize(
    "bad", [3.0, -0.5, float("nan"), float("inf"), "1", None, (2, "too high")],
    ids=["above-1", "negative", "nan", "inf", "str", "none", "tuple-above-1"],
)
def test_fit_refuses_a_metric_score_outside_0_to_1_naming_metric_value_and_item(bad):
    model = scripted()
    chain, system = qa_step(model, backward_model=model)

    def wild(example, prediction):
        return bad

    with pytest.raises(MetricScoreError) as info:
        fit(chain, DATA, DATA, metric=wild, optimizer_model=model, progress=False)
    message = str(info.value)
    assert "the metric wild returned" in message and repr(bad) in message
    assert "example 0 ({'question': 'q0', 'answer': '4'})" in message
    assert "scores must be numbers from 0 to 1" in message
    assert (info.value.metric, info.value.index) == ("wild", 0)
    assert system.data == "Answer the question."  # no step was taken on such scores


def test_a_bad_score_during_a_training_step_names_the_example_by_its_content():
    """In a minibatch the position is not the training set's, so the message shows the
    example itself rather than an index."""
    model = scripted()
    chain, _ = qa_step(model, backward_model=model)
    with pytest.raises(MetricScoreError) as info:
        fit(chain, DATA[:1], None, metric=lambda e, p: 1.5, optimizer_model=model,
            evaluate_train=False, progress=False)
    message = str(info.value)
    assert "returned 1.5 for an example ({'question': 'q0', 'answer': '4'})" in message


def test_evaluate_refuses_an_out_of_range_score_with_the_item_index():
    chain = RunnableLambda(lambda x: x["question"])

    def counts(example, prediction):
        return 2 if prediction == "q1" else 1

    with pytest.raises(MetricScoreError, match=r"returned 2 for example 1 \(\{'question': 'q1'"):
        evaluate(chain, DATA, counts)


async def _async_wild(example, prediction):
    return -1.0, "negative"


def test_an_async_metric_is_checked_too():
    chain = RunnableLambda(lambda x: x["question"])
    with pytest.raises(MetricScoreError, match=r"_async_wild returned \(-1.0, 'negative'\)"):
        evaluate(chain, DATA, _async_wild)


def test_bools_count_as_0_and_1_and_a_metric_that_raises_still_fails_only_its_item():
    chain = RunnableLambda(lambda x: x["question"])
    result = evaluate(chain, DATA, lambda e, p: p == "q0")
    assert [item.score for item in result.items] == [1.0, 0.0, 0.0]

    def picky(example, prediction):
        if prediction == "q2":
            raise KeyError("no such field")
        return MetricResult(1.0, None)

    result = evaluate(chain, DATA, picky)
    assert [item.score for item in result.items] == [1.0, 1.0, 0.0]
    assert "metric picky failed: KeyError" in result.items[2].error


CLI_CHAIN = textwrap.dedent(
    '''
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    def build(model):
        prompt = ChatPromptTemplate.from_messages([("system", "Answer."), ("human", "{question}")])
        return prompt | model | StrOutputParser()

    def out_of_range(example, prediction):
        return 10
    '''
)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A folder with the chain module and four rows (answers 0..3), as the CLI reads them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app.py").write_text(CLI_CHAIN)
    lines = [json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(4)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def evaluate_args(project, *extra, metric="exact_match"):
    return ["evaluate", "--chain", "app:build", "--data", str(project / "data.jsonl"),
            "--metric", metric, "--model", "scripted", *extra]


def test_cli_evaluate_refuses_an_out_of_range_score_with_the_file_and_line(project, capsys):
    assert main(evaluate_args(project, metric="app:out_of_range")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("afnio-langchain: ")]
    assert line.startswith(f"afnio-langchain: error: {project / 'data.jsonl'}, line 1: the metric out_of_range returned 10")
    assert "scores must be numbers from 0 to 1" in line


# ------------------------------------------------------------ 2. a backward model


def test_fit_without_any_backward_model_is_refused_before_any_model_call():
    model = scripted()
    chain, _ = qa_step(model)
    with pytest.raises(TrainingError) as info:
        fit(chain, DATA, DATA, metric=exact_match, optimizer_model=model, progress=False)
    message = str(info.value)
    assert "no model is set to write the feedback" in message
    for way in ("backward_model=", "set_backward_model(", "use_backward_model(", "--backward-model"):
        assert way in message
    assert len(model.calls) == 0


def test_a_plain_chain_without_a_backward_model_is_refused_before_any_model_call():
    model = scripted()
    with pytest.raises(TrainingError, match="no model is set to write the feedback"):
        fit(qa_prompt() | model | StrOutputParser(), DATA, DATA, metric=exact_match,
            optimizer_model=model, progress=False)
    assert len(model.calls) == 0


@pytest.mark.parametrize(
    "way", ["trainer", "process", "scoped", "step", "make_trainable"],
)
def test_every_way_of_setting_a_backward_model_still_trains(way):
    model = scripted()
    options = {"optimizer_model": model, "progress": False, "batch_size": 3}
    if way == "make_trainable":
        chain = make_trainable(qa_prompt() | model | StrOutputParser(), backward_model=model)
    else:
        chain, _ = qa_step(model, **({"backward_model": model} if way == "step" else {}))
    if way == "trainer":
        options["backward_model"] = model
    if way == "process":
        set_backward_model(model)
    with use_backward_model(model) if way == "scoped" else contextlib.nullcontext():
        result = fit(chain, DATA, DATA, metric=exact_match, **options)
    assert (result.baseline["val"], result.final["val"]) == (0.0, 1.0)


def test_a_parameter_trained_through_a_function_the_chain_hides_is_not_refused():
    """A function that runs its own op (with its own backward model) is invisible to the
    chain's graph: fit cannot tell, so it does not refuse."""
    model = scripted()
    system = Variable("Answer the question.", role="system prompt", requires_grad=True)

    def ask(inputs):
        messages = [{"role": "system", "content": [system]},
                    {"role": "user", "content": [Variable(inputs["question"])]}]
        return ChatCompletion.apply(model, messages, backward_model=model)

    result = fit(RunnableLambda(ask), DATA, DATA, metric=exact_match, params=[system],
                 optimizer_model=model, progress=False, batch_size=3)
    assert result.final["val"] == 1.0


# ------------------------------------------------------------ 3. chains the checks let through


@pytest.mark.parametrize(
    "build",
    [
        lambda p, m: p | m | StrOutputParser(),
        lambda p, m: p | m,
        lambda p, m: p | m | JsonOutputParser(),
        lambda p, m: p | m | JsonOutputParser() | itemgetter("answer"),
        lambda p, m: make_trainable(p | m | JsonOutputParser()) | itemgetter("answer"),
        lambda p, m: RunnableParallel(reply=p | m | StrOutputParser()),
        lambda p, m: qa_step(m)[0] | RunnableLambda(lambda v: v),
    ],
    ids=["str-parser", "chat-model", "json", "json-then-field", "trainable-json-then-field",
         "parallel", "function"],
)
def test_chains_that_train_are_not_refused(build):
    model = scripted()
    Trainer(build(qa_prompt(), model), exact_match, optimizer_model=model,
            backward_model=model, progress=False).check_setup()
    assert len(model.calls) == 0


def test_a_dict_a_function_builds_from_a_step_trains_through_its_variables():
    model = scripted()
    step, _ = qa_step(model, backward_model=model)
    chain = step | RunnableLambda(lambda v: {"reply": v})  # output type: Any
    result = fit(chain, DATA, DATA, metric=lambda e, p: MetricResult(0.0, "Say more."),
                 optimizer_model=model, progress=False, epochs=1)
    assert result.history["steps"][0]["params"][0]["gradients"] > 0


# ------------------------------------------------------------ 4. evaluate's progress bar


def test_evaluate_shows_a_progress_bar_on_stderr_that_can_be_turned_off(capsys):
    chain = RunnableLambda(lambda x: x["question"])
    evaluate(chain, DATA, exact_match)
    err = capsys.readouterr().err
    assert "evaluating" in err and "3/3" in err
    evaluate(chain, DATA, exact_match, progress=False)
    assert capsys.readouterr().err == ""


def test_trainer_evaluate_follows_the_trainers_progress_option(capsys):
    model = scripted()
    chain, _ = qa_step(model)
    for progress, shown in ((True, True), (False, False)):
        Trainer(chain, exact_match, optimizer_model=model, progress=progress).evaluate(DATA)
        assert ("evaluating" in capsys.readouterr().err) is shown


def test_cli_evaluate_shows_progress_and_no_progress_hides_it(project, capsys):
    assert main(evaluate_args(project)) == 0
    captured = capsys.readouterr()
    assert "evaluating" in captured.err and "4/4" in captured.err
    assert captured.out.startswith("score: ")
    assert main(evaluate_args(project, "--no-progress")) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("score: ")
