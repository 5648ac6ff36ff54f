"""``TextualGradientDescent`` behaving as DSPy documents its optimizers, written from
DSPy's documentation and source (stanfordnlp/dspy, 3.3.1 and the installed 3.4):

- ``compile`` takes what COPRO, MIPROv2 and GEPA take (their ``compile`` signatures in
  ``dspy/teleprompt/``) and refuses only what it cannot honour, saying why;
- evaluation is ``dspy.Evaluate``'s (docs/docs/api/evaluation/Evaluate.md: a failing
  example gets ``failure_score``; ``max_errors`` stops a pass), and the scores agree
  with ``dspy.Evaluate`` run by the test itself;
- a DSPy LM writing gradients and proposals is asked through DSPy's adapter, and a
  reply to another signature is never a gradient or an instruction;
- statistics under COPRO's and MIPROv2's names (``candidate_programs``,
  ``total_calls``, ``results_best``, ``results_latest``, ``score``, ``trial_logs``);
- the compiled program is an ordinary DSPy program: same structure, the student left
  alone, state saved and loaded as docs/docs/tutorials/saving/index.md shows.
"""

from __future__ import annotations

import copy
import logging

import pytest

dspy = pytest.importorskip("dspy")

from dspy.utils import DummyLM  # noqa: E402

from afnio_langchain.dspy import TextualGradientDescent, as_dspy_lm, chat_adapter_reply  # noqa: E402
from afnio_langchain.testing import ScriptedChatModel  # noqa: E402

DEFAULT = "Given the fields `country`, produce the fields `capital`."
REWRITE = "Answer with the name of the capital city."


@pytest.fixture(autouse=True)
def clear_settings():
    yield
    from dspy.dsp.utils.settings import DEFAULT_CONFIG

    dspy.configure(**copy.deepcopy(DEFAULT_CONFIG), inherit_config=False)


def exact(gold, pred, trace=None):
    return gold.capital == pred.capital


def examples(*pairs):
    return [dspy.Example(country=c, capital=k).with_inputs("country") for c, k in pairs]


def capital_lm(unparseable=()):
    """A program LM that names the capital only when its instructions ask for "the name of
    the capital city" (else it repeats the country); countries in ``unparseable`` get a
    reply with no fields at all."""
    fields = chat_adapter_reply(
        {"capital": lambda text: _capital(text) if "name of the capital city" in text else _country(text)}
    )

    def reply(text: str) -> str:
        if any(f"[[ ## country ## ]]\n{c}" in text for c in unparseable):
            return "I would rather not say."
        return fields(text)

    return as_dspy_lm(ScriptedChatModel(forward=reply))


CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo"}


def _country(text: str) -> str:
    return next(c for c in CAPITALS if f"[[ ## country ## ]]\n{c}" in text)


def _capital(text: str) -> str:
    return CAPITALS[_country(text)]


def coach():
    return ScriptedChatModel(feedback="Ask for the capital city, by name.", optimizer=REWRITE)


# ------------------------------------------------------------------ compile arguments


def test_copro_gepa_and_miprov2_calls_as_written_are_accepted():
    data = examples(("France", "Paris"), ("Japan", "Tokyo"))
    student = dspy.Predict("country -> capital")
    calls = {
        "COPRO": {"eval_kwargs": {"num_threads": 1, "display_progress": False}},
        "GEPA": {"valset": data, "teacher": None},
        "MIPROv2": {
            "valset": data,
            "num_trials": 1,
            "max_bootstrapped_demos": 0,
            "max_labeled_demos": 0,
            "seed": 9,
            "minibatch": False,
            "requires_permission_to_run": False,
            "provide_traceback": True,
        },
    }
    for name, kwargs in calls.items():
        optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=1)
        with dspy.context(lm=capital_lm()):
            optimized = optimizer.compile(student, trainset=data, **kwargs)
        assert optimized.signature.instructions == REWRITE, name
        assert optimizer.last_report.best_score == 1.0, name


@pytest.mark.parametrize("score", ["np.bool_", "np.int64", "np.float32"])
def test_a_metric_returning_a_numpy_scalar_scores_as_dspy_evaluate_reads_it(score):
    # Metrics built on NumPy or pandas comparisons return NumPy scalars; dspy.Evaluate
    # and DSPy's optimizers only add and compare scores, so these work there.
    np = pytest.importorskip("numpy")
    convert = {"np.bool_": np.bool_, "np.int64": np.int64, "np.float32": np.float32}[score]

    def numpy_exact(gold, pred, trace=None):
        return convert(np.array([gold.capital]) == np.array([pred.capital])).all()

    data = examples(("France", "Paris"), ("Japan", "Tokyo"))
    optimizer = TextualGradientDescent(numpy_exact, backward_model=coach(), num_threads=1)
    with dspy.context(lm=capital_lm()):
        optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=data)
    report = optimizer.last_report
    assert (report.initial_errors, report.failed_examples) == (0, 0)
    assert optimized.signature.instructions == REWRITE and report.best_score == 1.0


def test_num_trials_limits_the_candidates_like_max_steps():
    data = examples(("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"))
    optimizer = TextualGradientDescent(exact, backward_model=coach(), batch_size=1, num_threads=1)
    with dspy.context(lm=capital_lm()):
        optimizer.compile(dspy.Predict("country -> capital"), trainset=data, num_trials=2)
    assert len(optimizer.last_report.steps) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"teacher": dspy.Predict("country -> capital")}, ValueError, "teacher has nothing to do"),
        ({"max_bootstrapped_demos": 4}, ValueError, "bootstraps no demos"),
        ({"max_labeled_demos": 2}, ValueError, "bootstraps no demos"),
        ({"minibatch": True}, ValueError, "whole valset"),
        ({"minibatch_size": 10}, ValueError, "whole valset"),
        ({"tip_aware_proposer": True}, ValueError, "no random tips"),
        ({"program_aware_proposer": False}, ValueError, "cannot be honoured"),
        ({"requires_permission_to_run": True}, ValueError, "no confirmation step"),
        ({"breadth": 2}, TypeError, "unknown argument 'breadth'"),
        ({"eval_kwargs": {"devset": []}}, TypeError, "cannot set \\['devset'\\]"),
        ({"eval_kwargs": {"num_treads": 2}}, TypeError, "dspy.Evaluate does not take: \\['num_treads'\\]"),
    ],
)
def test_what_cannot_be_honoured_is_refused_before_any_call(kwargs, error, message):
    model = coach()
    lm = DummyLM([{"capital": "Paris"}])
    optimizer = TextualGradientDescent(exact, backward_model=model)
    with dspy.context(lm=lm), pytest.raises(error, match=message):
        optimizer.compile(dspy.Predict("country -> capital"), trainset=examples(("France", "Paris")), **kwargs)
    assert model.calls == [] and lm.history == []


# ------------------------------------------------------------------ evaluation


def test_a_compile_with_one_unparseable_example_completes_with_it_scored_zero():
    data = examples(("France", "Paris"), ("Italy", "Rome"))
    lm = capital_lm(unparseable=["Italy"])
    optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=1)
    with dspy.context(lm=lm):
        optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=data)
        # the scores agree with dspy.Evaluate's own, the unparseable example scoring 0
        before = dspy.Evaluate(devset=data, metric=exact)(dspy.Predict("country -> capital"))
        after = dspy.Evaluate(devset=data, metric=exact)(optimized)
    report = optimizer.last_report
    assert (report.initial_score, report.initial_errors) == (before.score / 100, 1) == (0.0, 1)
    (step,) = report.steps
    assert (step.train_score, step.errors, step.with_feedback) == (0.0, 1, 1)
    assert (step.val_score, step.val_errors, step.accepted) == (after.score / 100, 1, True) == (0.5, 1, True)
    assert report.failed_examples == 3 and optimized.signature.instructions == REWRITE


def test_failure_score_and_max_errors_are_dspy_evaluates():
    data = examples(("France", "Paris"), ("Italy", "Rome"), ("Japan", "Tokyo"))
    optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=1)
    with dspy.context(lm=capital_lm(unparseable=["Italy"])):
        optimizer.compile(
            dspy.Predict("country -> capital"), trainset=data, eval_kwargs={"failure_score": 0.5}
        )
    assert optimizer.last_report.initial_score == pytest.approx(0.5 / 3)  # 0, 0.5, 0

    optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=1, max_errors=2)
    with dspy.context(lm=capital_lm(unparseable=["Italy", "Japan"])):
        with pytest.raises(RuntimeError, match=r"2 examples failed, reaching max_errors=2"):
            optimizer.compile(dspy.Predict("country -> capital"), trainset=data)


def test_a_structurally_impossible_compile_fails_before_spending_calls():
    data = examples(("France", "Paris"))
    model = coach()
    with dspy.context(lm=None):
        with pytest.raises(RuntimeError, match=r"no LM is configured for the predictor\(s\) \['self'\]"):
            TextualGradientDescent(exact, backward_model=model).compile(
                dspy.Predict("country -> capital"), trainset=data
            )
        with pytest.raises(RuntimeError, match="needs a model to write feedback"):
            TextualGradientDescent(exact).compile(dspy.Predict("country -> capital"), trainset=data)
    unmarked = [dspy.Example(country="France", capital="Paris")]
    with dspy.context(lm=DummyLM([{"capital": "Paris"}])) as _:
        with pytest.raises(ValueError, match=r"trainset\[0\] has no inputs marked"):
            TextualGradientDescent(exact, backward_model=model).compile(
                dspy.Predict("country -> capital"), trainset=unmarked
            )
    with pytest.raises(TypeError, match="must accept"):
        TextualGradientDescent(lambda gold: 1.0)
    assert model.calls == []


# ------------------------------------------------------------------ DSPy LMs' protocol


def test_a_dummylm_only_setup_never_changes_an_instruction_to_adapter_text():
    """The scenario of the issue: one DummyLM answers everything (the program, and, as
    dspy.settings.lm, the gradients and proposals), in another signature's fields."""
    data = examples(("France", "Paris"), ("Japan", "Tokyo"))
    replies = [{"reasoning": "It is a country.", "capital": "France"}] * 4
    replies += [{"reasoning": "Think harder.", "answer": "NEW INSTRUCTION: 'No more responses'"}] * 8
    lm = DummyLM(replies)
    dspy.configure(lm=lm)
    optimizer = TextualGradientDescent(exact, num_threads=1, num_epochs=2, batch_size=1)
    optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=data)
    assert optimized.signature.instructions == DEFAULT
    assert all(step.accepted is None for step in optimizer.last_report.steps)
    assert any(step.backward_errors for step in optimizer.last_report.steps)


def test_a_proposal_in_the_wrong_protocol_is_never_an_instruction():
    data = examples(("France", "Paris"))
    rewriter = DummyLM({"": {"reasoning": "...", "new_instruction": "NEW INSTRUCTION: 'x'"}})
    optimizer = TextualGradientDescent(exact, backward_model=coach(), optimizer_model=rewriter, num_threads=1)
    with dspy.context(lm=capital_lm()):
        optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=data)
    (step,) = optimizer.last_report.steps
    assert step.note == "no update: every proposal was rejected or skipped"
    assert optimized.signature.instructions == DEFAULT
    assert len(rewriter.history) == 1  # one call: an unparseable reply is not asked again


@pytest.mark.parametrize("adapter", [None, "json"])
def test_a_dspy_lm_that_answers_the_protocol_writes_gradients_and_proposals(adapter):
    """A DummyLM scripted with the requested fields (``var_1``: the gradient,
    ``improved_value``: the proposal) is heard, through DSPy's ChatAdapter or the
    JSONAdapter configured for the program."""
    data = examples(("France", "Paris"), ("Japan", "Tokyo"))
    settings = {} if adapter is None else {"adapter": dspy.JSONAdapter()}
    coach_lm = DummyLM(
        [{"var_1": "Ask for the capital city by name."}, {"improved_value": REWRITE}],
        adapter=settings.get("adapter"),
    )
    optimizer = TextualGradientDescent(exact, backward_model=coach_lm, num_threads=1, batch_size=1, max_steps=1)
    with dspy.context(lm=capital_lm(), **settings):
        optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=data)
    assert optimized.signature.instructions == REWRITE
    backward, proposal = coach_lm.history
    assert "Ask for the capital city by name." in str(proposal["messages"])
    assert "improved_value" in str(proposal["messages"]) and "var_1" in str(backward["messages"])


def test_an_as_dspy_lm_lm_as_the_only_model_asks_its_own_client_in_json():
    """A dspy.LM bridging a LangChain chat model (as_dspy_lm) is the package's own model
    client behind DSPy's API: gradients and proposals go to that client directly, in
    the JSON protocol, counted under their purposes."""
    chat = ScriptedChatModel(
        forward=chat_adapter_reply(
            {"capital": lambda t: _capital(t) if "name of the capital city" in t else _country(t)}
        ),
        feedback="Ask for the capital city, by name.",
        optimizer=REWRITE,
    )
    dspy.configure(lm=as_dspy_lm(chat))
    optimizer = TextualGradientDescent(exact, num_threads=1)
    optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=examples(("France", "Paris")))
    assert optimized.signature.instructions == REWRITE
    assert len(chat.calls_of("backward")) == 1 and len(chat.calls_of("optimizer")) == 1
    assert set(optimizer.last_report.usage["by_purpose"]) == {"forward", "backward", "optimizer"}


# ------------------------------------------------------------------ the gate


def test_a_rewrite_that_ties_at_zero_is_never_kept_by_either_gate():
    data = examples(("France", "Paris"))
    for gate in ("improve", "no_worse"):
        # the program's answers do not depend on its instructions: every rewrite ties at 0
        optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=1, gate=gate)
        with dspy.context(lm=DummyLM({"France": {"capital": "Lyon"}})):
            optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=data)
        (step,) = optimizer.last_report.steps
        assert step.updated == ["self"] and step.val_score == 0.0 and step.accepted is False
        assert optimized.signature.instructions == DEFAULT


# ------------------------------------------------------------------ statistics and logs


def test_statistics_under_copro_and_miprov2_names(caplog):
    data = examples(("France", "Paris"), ("Japan", "Tokyo"))
    optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=1, track_stats=True)
    with caplog.at_level(logging.INFO, logger="afnio_langchain.dspy._teleprompter"):
        with dspy.context(lm=capital_lm()):
            optimized = optimizer.compile(dspy.Predict("country -> capital"), trainset=data)
            evaluated = dspy.Evaluate(devset=data, metric=exact)(optimized).score
    best, initial = optimized.candidate_programs
    assert (best["score"], best["step"], best["accepted"]) == (evaluated, 1, True) == (100.0, 1, True)
    assert (initial["score"], initial["step"]) == (0.0, 0)
    assert best["instructions"] == {"self": REWRITE} and best["program"] is not optimized
    assert optimized.total_calls == 6  # 2 + 2 + 2 examples scored
    assert optimized.score == 100.0 and optimized.prompt_model_total_calls == 1
    assert optimized.results_best["self"] == {
        "depth": [0, 1], "max": [0.0, 100.0], "average": [0.0, 50.0], "min": [0.0, 0.0], "std": [0.0, 50.0],
    }
    assert optimized.results_latest["self"]["max"] == [0.0, 100.0]
    assert [log["full_eval_score"] for log in optimized.trial_logs.values()] == [0.0, 100.0]
    assert optimized.trial_logs[2]["total_eval_calls_so_far"] == 6
    messages = [r.getMessage() for r in caplog.records if r.name == "afnio_langchain.dspy._teleprompter"]
    assert any(m.startswith("Step 1 (epoch 1): minibatch score 0.000") and m.endswith(": kept") for m in messages)
    assert messages[-1] == "Returning the program with validation score 1.000 (the student's: 0.000)"

    plain = TextualGradientDescent(exact, backward_model=coach(), num_threads=1)
    with dspy.context(lm=capital_lm()):
        optimized = plain.compile(dspy.Predict("country -> capital"), trainset=data)
    assert hasattr(optimized, "candidate_programs") and hasattr(optimized, "total_calls")
    assert not hasattr(optimized, "results_best")


# ------------------------------------------------------------------ the compiled program


class TwoFields(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.ChainOfThought("country -> capital")

    def forward(self, country):
        return self.answer(country=country)


def test_the_compiled_program_is_an_ordinary_dspy_program(tmp_path):
    data = examples(("France", "Paris"))
    student = TwoFields()
    lm = DummyLM(
        [{"reasoning": "r", "capital": "France"}] * 2 + [{"reasoning": "r", "capital": "Paris"}] * 3
    )
    optimizer = TextualGradientDescent(exact, backward_model=coach(), num_threads=1)
    with dspy.context(lm=lm):
        optimized = optimizer.compile(student, trainset=data)
    assert [n for n, _ in optimized.named_predictors()] == [n for n, _ in student.named_predictors()]
    assert student.answer.predict.signature.instructions == DEFAULT
    assert optimized.answer.predict.signature.instructions == REWRITE

    # docs/docs/tutorials/saving: the state as JSON, into the same program rebuilt
    optimized.save(str(tmp_path / "program.json"), save_program=False)
    loaded = TwoFields()
    loaded.load(str(tmp_path / "program.json"))
    assert str(loaded.answer.predict.signature) == str(optimized.answer.predict.signature)
    assert loaded.answer.predict.signature.instructions == REWRITE

    # ... and the whole program, with dspy.load
    optimized.save(str(tmp_path / "whole"), save_program=True)
    again = dspy.load(str(tmp_path / "whole"), allow_pickle=True)
    assert again.answer.predict.signature.instructions == REWRITE
