"""The fit loop: feedback reaching the prompts, skipping correct items, validation-gated
rollback, checkpoints and resuming after an interruption, early stopping, budgets,
condensation of large minibatches, failures. Hermetic: ScriptedChatModel."""

from __future__ import annotations

import json
import re

import pytest

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.models import track_usage
from afnio_langchain.optim import TGD
from afnio_langchain.optim import _prompts as optim_prompts
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import (
    CheckpointError,
    MetricResult,
    Trainer,
    TrainingError,
    exact_match,
    fit,
    load_checkpoint,
)
from afnio_langchain.train._run import epoch_order


def examples(n: int, start: int = 1) -> list[dict[str, str]]:
    return [{"question": f"question {i}", "answer": f"answer {i}"} for i in range(start, start + n)]


def versioned_forward(text: str) -> str:
    """Answers question i correctly when the system prompt is 'prompt vN' with i < N*2,
    or when it says GOOD; never when it says BAD."""
    i = int(re.search(r"question (\d+)", text).group(1))
    if "BAD" in text:
        return "wrong"
    if "GOOD" in text:
        return f"answer {i}"
    match = re.search(r"prompt v(\d+)", text)
    version = int(match.group(1)) if match else 0
    return f"answer {i}" if i < version * 2 else "wrong"


def next_version(text: str) -> str:
    """The optimizer: 'prompt vN' -> 'prompt vN+1' (stateless, so runs are repeatable)."""
    version = int(re.search(r"prompt v(\d+)", text).group(1))
    return f"prompt v{version + 1}"


def make_chain(model, value="prompt v1"):
    system = Variable(value, role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{question}")])
    return chain, system


def make_model(**scripts):
    scripts.setdefault("forward", versioned_forward)
    scripts.setdefault("feedback", "Answer the question exactly.")
    scripts.setdefault("optimizer", next_version)
    return ScriptedChatModel(**scripts)


def trainer_for(model, chain, **options) -> Trainer:
    options.setdefault("optimizer_model", model)
    options.setdefault("backward_model", model)
    options.setdefault("progress", False)
    return Trainer(chain, exact_match, **options)


# ------------------------------------------------------------------------ protocol


def test_a_step_sends_metric_feedback_backward_for_failed_items_only_then_updates():
    model = make_model()
    chain, system = make_chain(model, "prompt v1")  # question 1 right, others wrong
    train = examples(3)
    trainer = trainer_for(model, chain, batch_size=3, shuffle=False, evaluate_train=False)
    result = trainer.fit(train)
    backward = model.calls_of("backward")
    assert len(backward) == 2  # question 1 was already correct: no feedback, no call
    texts = " ".join(call.text for call in backward)
    assert "The expected output was exactly 'answer 2', but the output was 'wrong'." in texts
    assert "question 1" not in texts
    assert system.data == "prompt v2"
    (step,) = result.history["steps"]
    assert step["decision"] == "accepted" and step["feedback_items"] == 2
    assert step["params"][0]["status"] == "updated"


def test_skip_correct_false_sends_feedback_for_every_item():
    model = make_model()
    chain, _ = make_chain(model, "prompt v1")
    trainer = trainer_for(model, chain, batch_size=3, shuffle=False, evaluate_train=False, skip_correct=False)
    trainer.fit(examples(3))
    assert len(model.calls_of("backward")) == 3


def test_metric_feedback_text_becomes_the_gradient():
    model = make_model()
    chain, _ = make_chain(model, "prompt v0")

    def metric(example, prediction):
        return MetricResult(0.0, f"FEEDBACK-FOR-{example['question']}")

    trainer = Trainer(chain, metric, optimizer_model=model, backward_model=model, progress=False,
                      batch_size=2, shuffle=False, evaluate_train=False)
    trainer.fit(examples(2))
    texts = [call.text for call in model.calls_of("backward")]
    assert any("FEEDBACK-FOR-question 1" in t for t in texts)
    assert any("FEEDBACK-FOR-question 2" in t for t in texts)


def test_every_item_correct_makes_no_backward_or_optimizer_call():
    model = make_model()
    chain, system = make_chain(model, "GOOD prompt")
    result = trainer_for(model, chain, batch_size=2, evaluate_train=False).fit(examples(4))
    assert model.calls_of("backward") == [] and model.calls_of("optimizer") == []
    assert system.data == "GOOD prompt"
    assert all(s["decision"].startswith("no feedback") for s in result.history["steps"])


def test_minibatches_follow_a_seeded_shuffle_that_changes_per_epoch():
    assert epoch_order(8, 1, 1) == epoch_order(8, 1, 1)
    assert epoch_order(8, 1, 1) != epoch_order(8, 1, 2) or epoch_order(8, 1, 1) != epoch_order(8, 2, 1)
    assert sorted(epoch_order(8, 3, 2)) == list(range(8))
    model = make_model()
    chain, _ = make_chain(model, "prompt v0")
    result = trainer_for(model, chain, batch_size=3, epochs=2, seed=5, gate="off",
                         evaluate_train=False).fit(examples(7))
    seen = [s["examples"] for s in result.history["steps"]]
    assert [len(b) for b in seen] == [3, 3, 1, 3, 3, 1]
    assert sorted(i for b in seen[:3] for i in b) == list(range(7))
    assert [i for b in seen[:3] for i in b] == epoch_order(7, 5, 1)


# -------------------------------------------------------------- validation gating


def test_a_step_that_makes_validation_worse_is_rolled_back():
    model = make_model(optimizer=["BAD prompt", "GOOD prompt"])
    chain, system = make_chain(model, "prompt v1")  # val: question 1 right -> 0.25
    val = examples(4)
    trainer = trainer_for(model, chain, batch_size=2, shuffle=False, evaluate_train=False)
    result = trainer.fit(examples(4, start=2), val)
    first, second = result.history["steps"]
    assert first["val_score"] == 0.0 and first["decision"].startswith("rolled back")
    assert second["val_score"] == 1.0 and second["decision"] == "accepted"
    assert system.data == "GOOD prompt"
    assert result.baseline["val"] == 0.25 and result.final["val"] == 1.0
    assert result.history["epochs"][-1]["rolled_back"] == 1


def test_the_rolled_back_value_is_restored_before_the_next_step():
    seen_values = []

    def optimizer(text):
        seen_values.append(re.search(r"<VARIABLE[^>]*>\n(.*?)\n</VARIABLE>", text, re.S).group(1))
        return "BAD prompt" if len(seen_values) == 1 else "prompt v9"

    model = make_model(optimizer=optimizer)
    chain, _ = make_chain(model, "prompt v1")
    trainer_for(model, chain, batch_size=2, shuffle=False, evaluate_train=False).fit(
        examples(4, start=2), examples(2)
    )
    assert seen_values == ["prompt v1", "prompt v1"]


def test_the_default_gate_rejects_a_step_that_only_ties():
    model = make_model(optimizer="prompt v1 (reworded)")
    chain, system = make_chain(model, "prompt v1")
    for options in ({}, {"gate": "improve"}):  # "improve" is the default
        result = trainer_for(model, chain, batch_size=2, evaluate_train=False, **options).fit(
            examples(2, start=3), examples(2)
        )
        (step,) = result.history["steps"]
        assert step["decision"] == "rolled back: validation 0.500 <= 0.500"
        assert system.data == "prompt v1"


def test_gate_no_worse_keeps_a_tie_above_zero_but_never_a_tie_at_zero():
    model = make_model(optimizer="prompt v1 (reworded)")
    chain, system = make_chain(model, "prompt v1")  # val: question 1 right -> 0.5
    result = trainer_for(model, chain, batch_size=2, gate="no_worse", evaluate_train=False).fit(
        examples(2, start=3), examples(2)
    )
    assert result.history["steps"][0]["decision"] == "accepted"
    assert system.data == "prompt v1 (reworded)"

    chain, system = make_chain(model, "prompt v0")  # val: nothing right -> 0.0, and so after
    result = trainer_for(model, chain, batch_size=2, gate="no_worse", evaluate_train=False).fit(
        examples(2, start=3), examples(2, start=5)
    )
    (step,) = result.history["steps"]
    assert step["decision"] == "rolled back: validation 0.000 = 0.000 (a tie at zero is never kept)"
    assert system.data == "prompt v0"


def test_gate_off_keeps_every_step_and_restores_the_best_values_at_the_end():
    model = make_model(optimizer=["GOOD prompt", "BAD prompt"])
    chain, system = make_chain(model, "prompt v1")
    result = trainer_for(model, chain, batch_size=2, epochs=2, gate="off", shuffle=False,
                         evaluate_train=False).fit(examples(2, start=3), examples(2))
    decisions = [s["decision"] for s in result.history["steps"]]
    assert decisions[0] == "accepted"
    assert [e["val_score"] for e in result.history["epochs"]] == [0.5, 1.0, 1.0]
    assert system.data == "GOOD prompt" and result.final["val"] == 1.0


# ------------------------------------------------------------ checkpoint / resume


class InterruptAt:
    """exact_match, raising KeyboardInterrupt when scoring the n-th training item."""

    name = "exact_match"

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def __call__(self, example, prediction):
        if prediction.grad_fn is not None:  # a training item (evaluations keep no graph)
            self.seen += 1
            if self.seen == self.n:
                raise KeyboardInterrupt
        return exact_match(example, prediction)


def run_plan(tmp_path, metric, name, resume=False):
    model = make_model()
    chain, system = make_chain(model, "prompt v0")
    trainer = Trainer(
        chain, metric, optimizer_model=model, backward_model=model, batch_size=2, epochs=2,
        seed=3, checkpoint_path=tmp_path / name, resume=resume, progress=False,
    )
    return trainer, model, system


def test_an_interrupted_run_resumes_without_losing_a_completed_step(tmp_path):
    # validation rises with each version (v1: 0.25, v2: 0.75...), so steps are kept
    train, val = examples(6), examples(4, start=1)
    reference, ref_model, ref_system = run_plan(tmp_path, exact_match, "ref.json")
    expected = reference.fit(train, val)

    interrupted, first_model, _ = run_plan(tmp_path, InterruptAt(5), "run.json")  # item 5 = step 3
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(train, val)
    saved = load_checkpoint(tmp_path / "run.json")
    assert saved.steps_done == 2 and saved.stage == "training"
    assert [s["step"] for s in saved.history["steps"]] == [1, 2]
    assert saved.values == [expected.history["steps"][1]["params"][0]["new_value"]]

    resumed, model, system = run_plan(tmp_path, exact_match, "run.json", resume=True)
    result = resumed.fit(train, val)
    # Only the remaining steps ran: one optimizer call per remaining step, no baseline redo.
    assert len(model.calls_of("optimizer")) == len(ref_model.calls_of("optimizer")) - 2
    assert [s["step"] for s in result.history["steps"]] == list(range(1, 7))
    strip = lambda steps: [{k: v for k, v in s.items() if k != "params"} for s in steps]  # noqa: E731
    assert strip(result.history["steps"]) == strip(expected.history["steps"])
    assert result.history["epochs"] == expected.history["epochs"]
    assert system.data == ref_system.data
    assert result.state.sessions == 2
    # Every call made counts, the interrupted step's too (it is redone, and paid twice).
    assert result.usage.total().calls == len(first_model.calls) + len(model.calls)
    assert result.usage.total().calls > expected.usage.total().calls


def test_resuming_a_finished_run_does_nothing_more(tmp_path):
    train = examples(2)
    first, _, _ = run_plan(tmp_path, exact_match, "c.json")
    done = first.fit(train)
    again, model, system = run_plan(tmp_path, exact_match, "c.json", resume=True)
    result = again.fit(train)
    assert model.calls == [] and result.history == done.history
    assert system.data == done.params[0].data


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    first, _, _ = run_plan(tmp_path, exact_match, "c.json")
    first.fit(examples(2))
    other, _, _ = run_plan(tmp_path, exact_match, "c.json", resume=True)
    with pytest.raises(CheckpointError, match="belongs to another run: train"):
        other.fit(examples(3))


def test_a_checkpoint_scored_by_another_metric_is_refused_and_an_older_one_resumes(tmp_path):
    import json

    first, _, _ = run_plan(tmp_path, exact_match, "c.json")
    first.fit(examples(2))

    def contains_answer(example, prediction):  # another metric: the scores would not compare
        return exact_match(example, prediction)

    other, _, _ = run_plan(tmp_path, contains_answer, "c.json", resume=True)
    with pytest.raises(CheckpointError, match='metric \\(saved "exact_match", now "contains_answer"\\)'):
        other.fit(examples(2))

    # A checkpoint written before the metric was part of a run's identity still resumes.
    path = tmp_path / "c.json"
    saved = json.loads(path.read_text())
    del saved["fingerprint"]["metric"]
    path.write_text(json.dumps(saved))
    again, model, _ = run_plan(tmp_path, exact_match, "c.json", resume=True)
    again.fit(examples(2))
    assert model.calls == []  # finished: nothing more to run


def test_the_checkpoint_is_json_written_after_each_step_and_holds_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value-123456")
    model = make_model()
    chain, _ = make_chain(model, "prompt v0")
    steps_seen = []

    def metric(example, prediction):
        path = tmp_path / "c.json"
        if path.exists():
            steps_seen.append(json.loads(path.read_text())["steps_done"])
        return exact_match(example, prediction)

    optimizer = TGD([chain.parameters()[0]], model=model, api_key="sk-test-secret-value-123456")
    Trainer(chain, metric, optimizer=optimizer, backward_model=model, batch_size=1,
            checkpoint_path=tmp_path / "c.json", progress=False, evaluate_train=False).fit(examples(3))
    assert {0, 1, 2} <= set(steps_seen)
    text = (tmp_path / "c.json").read_text()
    assert "sk-test-secret-value-123456" not in text
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------- stopping rules


def test_patience_stops_after_epochs_without_a_better_validation_score():
    model = make_model(optimizer=["prompt v1 again", "prompt v1 once more", "prompt v1 still"])
    chain, _ = make_chain(model, "prompt v1")
    result = trainer_for(model, chain, batch_size=2, epochs=5, patience=1,
                         evaluate_train=False).fit(examples(2, start=3), examples(2))
    assert result.stopped.startswith("early stopping")
    assert len(result.history["epochs"]) == 2  # the baseline and one epoch


def test_target_score_and_call_budget_stop_training_early():
    model = make_model(optimizer="GOOD prompt")
    chain, _ = make_chain(model, "prompt v0")
    result = trainer_for(model, chain, batch_size=1, epochs=3, target_score=1.0,
                         evaluate_train=False).fit(examples(3), examples(2))
    assert result.stopped.startswith("target score reached") and len(result.history["steps"]) == 1

    model = make_model()
    chain, _ = make_chain(model, "prompt v0")
    result = trainer_for(model, chain, batch_size=1, epochs=3, max_calls=10, gate="off",
                         evaluate_train=False).fit(examples(3))
    assert result.stopped.startswith("budget:") and len(result.history["steps"]) < 9
    assert result.usage.total().calls >= 10

    model = make_model()
    chain, _ = make_chain(model, "prompt v0")
    result = trainer_for(model, chain, batch_size=1, epochs=3, max_tokens=200, gate="off",
                         evaluate_train=False).fit(examples(3))
    total = result.usage.total()
    assert result.stopped.startswith("budget:") and "max_tokens 200" in result.stopped
    assert total.input_tokens + total.output_tokens >= 200 and len(result.history["steps"]) < 9


# --------------------------------------------------------------------- large batches


def test_a_large_minibatch_has_its_gradients_condensed_before_the_update():
    model = make_model(optimizer=lambda text: "merged" if optim_prompts.CONDENSED_KEY in text else "prompt v99")
    chain, system = make_chain(model, "prompt v0")
    trainer_for(model, chain, batch_size=10, evaluate_train=False).fit(examples(10))
    calls = model.calls_of("optimizer")
    assert len(calls) == 2 and optim_prompts.CONDENSED_KEY in calls[0].text
    assert "merged" in calls[1].text and system.data == "prompt v99"


# ------------------------------------------------------------------------- failures


def test_a_chain_failing_on_every_validation_example_stops_before_training(tmp_path):
    def broken(text):
        raise ConnectionError("connection refused")

    model = make_model(forward=broken)
    chain, _ = make_chain(model)
    trainer = trainer_for(model, chain, checkpoint_path=tmp_path / "c.json")
    with pytest.raises(TrainingError, match="every validation example: .*connection refused"):
        trainer.fit(examples(2), examples(2))
    assert not (tmp_path / "c.json").exists()


def test_failing_backward_passes_end_in_a_training_error_after_max_failed_steps(tmp_path):
    def broken(text):
        raise ValueError("backward model down")

    model = make_model(feedback=broken)
    chain, system = make_chain(model, "prompt v0")
    trainer = trainer_for(model, chain, batch_size=1, max_failed_steps=2, evaluate_train=False,
                          checkpoint_path=tmp_path / "c.json")
    with pytest.raises(TrainingError, match="2 steps in a row failed.*backward"):
        trainer.fit(examples(4))
    saved = load_checkpoint(tmp_path / "c.json")
    assert saved.steps_done == 2 and system.data == "prompt v0"
    assert all(s["decision"].startswith("failed") for s in saved.history["steps"])


def test_some_failing_items_only_lose_themselves():
    def flaky(text):
        if "question 2" in text:
            raise ValueError("bad item")
        return versioned_forward(text)

    model = make_model(forward=flaky)
    chain, system = make_chain(model, "prompt v0")
    result = trainer_for(model, chain, batch_size=3, evaluate_train=False).fit(examples(3))
    (step,) = result.history["steps"]
    assert step["errors"] == 1 and step["feedback_items"] == 2 and system.data == "prompt v1"


def test_a_chain_without_variable_output_is_a_clear_error():
    from langchain_core.runnables import RunnableLambda

    model = make_model()
    system = Variable("prompt v0", role="system prompt", requires_grad=True)
    chain = RunnableLambda(lambda x: "plain text")
    trainer = Trainer(chain, exact_match, optimizer_model=model, params=[system], progress=False,
                      evaluate_train=False)
    with pytest.raises(TrainingError, match="not a Variable"):
        trainer.fit(examples(1))


def test_options_are_validated():
    model = make_model()
    chain, _ = make_chain(model)
    with pytest.raises(ValueError, match="gate must be one of"):
        Trainer(chain, exact_match, optimizer_model=model, gate="sometimes")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        Trainer(chain, exact_match, optimizer_model=model, batch_size=0)
    with pytest.raises(TypeError, match="optimizer_model"):
        Trainer(chain, exact_match)
    with pytest.raises(ValueError, match="validation set is empty"):
        Trainer(chain, exact_match, optimizer_model=model, progress=False).fit(examples(1), [])


def test_fit_function_and_usage_figures(tmp_path):
    model = make_model()
    chain, system = make_chain(model, "prompt v0")
    with track_usage() as usage:
        result = fit(chain, examples(2), examples(2), metric=exact_match, optimizer_model=model,
                     backward_model=model, batch_size=2, progress=False)
    assert result.usage.total().calls == usage.total().calls
    assert result.eval_usage.total().calls == 2 + 2 + 2 + 2  # val, train before; val gate; train after
    assert set(result.usage.by_purpose()) == {"forward", "backward", "optimizer"}
    assert result.cost.total == 0.0 and result.wall_time_s > 0


# ------------------------------------------------------------ plain LangChain chains


def test_a_plain_langchain_chain_is_made_trainable_and_exports_back():
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    model = ScriptedChatModel(
        forward=lambda text: "4" if "digits" in text else "four",
        feedback="Use digits.", optimizer="Answer with digits only.",
    )
    prompt = ChatPromptTemplate.from_messages([("system", "Answer the question."), ("human", "{question}")])
    trainer = Trainer(prompt | model | StrOutputParser(), exact_match, optimizer_model=model,
                      backward_model=model, batch_size=2, progress=False)
    data = [{"question": "2+2?", "answer": "4"}] * 2
    result = trainer.fit(data, data[:1])
    assert [p.data for p in trainer.params] == ["Answer with digits only."]
    assert result.baseline["val"] == 0.0 and result.final["val"] == 1.0
    assert trainer.chain.to_langchain().invoke({"question": "2+2?"}) == "4"


def test_estimate_calls_bounds_what_a_run_makes():
    model = make_model()
    chain, _ = make_chain(model, "prompt v0")
    trainer = trainer_for(model, chain, batch_size=2, epochs=2)
    estimate = trainer.estimate_calls(4, 2)
    result = trainer.fit(examples(4), examples(2, start=5))
    made = {p: c.calls for p, c in result.usage.by_purpose().items()}
    assert made["forward"] <= estimate["forward"] and made["backward"] <= estimate["backward"]
    assert made["optimizer"] <= estimate["optimizer"]


def test_steps_that_keep_failing_stop_the_run_and_say_how_to_go_on():
    """A backward model that fails on every call: every step fails. The run stops
    after ``max_failed_steps`` with the cause, and without a checkpoint it does not claim
    one. (With no backward model at all, fit refuses before any call:
    test_train_upfront_checks.py.)"""
    model = make_model()
    chain, system = make_chain(model, "prompt v0")

    def failing(text):
        raise ValueError("the feedback model failed")

    broken = make_model(feedback=failing)
    trainer = trainer_for(model, chain, backward_model=broken, batch_size=1, max_failed_steps=2,
                          evaluate_train=False)
    with pytest.raises(TrainingError) as info:
        trainer.fit(examples(3))
    message = str(info.value)
    assert "2 steps in a row failed" in message and "the feedback model failed" in message
    assert "Fix the cause and run again" in message and "checkpoint was kept" not in message
    assert system.data == "prompt v0"
