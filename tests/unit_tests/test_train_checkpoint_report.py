"""Checkpoints (atomic JSON, versioned, validated, no secrets), usage and cost
accounting, and run reports (JSON, Markdown with diffs, PNG plot). Hermetic."""

from __future__ import annotations

import builtins
import json
import os

import pytest

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.models import UsageTracker
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import (
    CheckpointError,
    Trainer,
    TrainingState,
    apply_prompts,
    estimate_cost,
    exact_match,
    load_checkpoint,
    save_checkpoint,
    write_report,
)
from afnio_langchain.train._accounting import (
    check_prices,
    merge_usage,
    usage_from_pairs,
    usage_pairs,
)
from afnio_langchain.train._checkpoint import check_resumable
from afnio_langchain.train._files import atomic_write_text
from afnio_langchain.train._report import build_report, prompt_diff, render_markdown


def state(**overrides) -> TrainingState:
    fields = dict(fingerprint={"train": "abc"}, roles=["system prompt"], initial_values=["a"],
                  values=["b"], best_values=["b"])
    fields.update(overrides)
    return TrainingState(**fields)


# ----------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trips_through_json(tmp_path):
    original = state(best_val=0.5, current_val=0.5, baseline={"val": 0.25, "train": None},
                     epoch=2, batch=1, steps_done=3, stage="training",
                     history={"epochs": [{"epoch": 0}], "steps": [{"step": 1}]},
                     usage={"total": [{"model": "m", "purpose": "forward", "calls": 2,
                                       "input_tokens": 5, "output_tokens": 1, "retries": 0,
                                       "failures": 0}], "evaluation": []})
    path = save_checkpoint(tmp_path / "sub" / "c.json", original)
    data = json.loads(path.read_text())
    assert data["format"] == "afnio_langchain.checkpoint" and data["version"] == 1
    assert load_checkpoint(path) == original


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 99}, "version 99 is not supported"),
        ({"format": "pickle"}, "not an afnio-langchain training checkpoint"),
        ({"values": ["a", "b"]}, "'values' must be a list of 1 parameter value"),
        ({"stage": "sleeping"}, "field 'stage': Input should be 'baseline', 'training'"),
        ({"epoch": 0}, "field 'epoch': Input should be greater than or equal to 1"),
        ({"best_val": "high"}, "field 'best_val': Input should be a valid number"),
        ({"history": {"epochs": [], "steps": "x"}}, "history.steps"),
        ({"usage": {"total": [{"model": "m"}], "evaluation": []}}, "usage.total"),
    ],
)
def test_malformed_checkpoints_are_refused_with_the_field_named(tmp_path, change, message):
    data = state().to_dict()
    data.update(change)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"format": "afnio_langchain.checkpoint", "vers')
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_check_resumable_names_what_differs():
    with pytest.raises(CheckpointError, match=r"batch_size \(saved 4, now 2\)"):
        check_resumable(state(fingerprint={"batch_size": 4}), {"batch_size": 2}, "c.json")
    check_resumable(state(fingerprint={"batch_size": 4}), {"batch_size": 4}, "c.json")


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    save_checkpoint(path, state(values=["old"]))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, state(values=["new"]))
    monkeypatch.undo()
    assert load_checkpoint(path).values == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary file left


def test_secrets_never_reach_the_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_PROVIDER_API_KEY", "sk-super-secret-987654321")
    save_checkpoint(tmp_path / "c.json", state(info={"api_key": "x", "note": "sk-super-secret-987654321"}))
    text = (tmp_path / "c.json").read_text()
    assert "sk-super-secret-987654321" not in text and '"api_key"' not in text
    atomic_write_text(tmp_path / "t.md", "key sk-super-secret-987654321")
    assert "sk-super-secret" not in (tmp_path / "t.md").read_text()


# ------------------------------------------------------------------------ accounting


def test_usage_rows_round_trip_and_merge():
    a = UsageTracker()
    a.record("m", "forward", input_tokens=3, output_tokens=1)
    a.record("m", "backward", input_tokens=5, retries=1)
    b = usage_from_pairs(usage_pairs(a))
    assert usage_pairs(b) == usage_pairs(a)
    merged = merge_usage(a, b)
    assert merged.by_purpose()["forward"].calls == 2 and merged.total().retries == 2
    with pytest.raises(ValueError, match="calls must be a non-negative int"):
        usage_from_pairs([{"model": "m", "purpose": "forward", "calls": -1}])


def test_cost_uses_exact_then_longest_prefix_prices_and_lists_unpriced_models():
    usage = UsageTracker()
    usage.record("gpt-4o-mini-2024-07-18", "forward", input_tokens=2_000_000, output_tokens=1_000_000)
    usage.record("gpt-4o", "optimizer", input_tokens=1_000_000)
    usage.record("mystery", "backward", input_tokens=10)
    cost = estimate_cost(usage)
    assert cost.by_purpose == {"backward": 0.0, "forward": 0.9, "optimizer": 2.5}
    assert cost.total == 3.4 and cost.unpriced == ("mystery",)
    custom = estimate_cost(usage, {"mystery": (1_000_000.0, 0.0)})
    assert custom.by_model["mystery"] == 10.0
    with pytest.raises(TypeError):
        check_prices({"m": [1]})
    assert check_prices({"m": [1, 2]}) == {"m": (1.0, 2.0)}


# --------------------------------------------------------------------------- reports


@pytest.fixture
def trained(tmp_path):
    model = ScriptedChatModel(
        forward=lambda text: "42" if "digits" in text else "forty-two",
        feedback="Ask for digits.",
        optimizer=["Reply with digits only.", "Reply with digits only, please."],
    )
    system = Variable("Answer the question.", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
    data = [{"q": "6*7?", "answer": "42"}, {"q": "40+2?", "answer": "42"}]
    trainer = Trainer(chain, exact_match, optimizer_model=model, backward_model=model,
                      batch_size=1, progress=False, info={"models": {"all": "scripted"}})
    return trainer.fit(data, data)


def test_report_holds_scores_curve_usage_prompts_and_history(trained):
    report = build_report(trained)
    assert report["scores"]["before"] == {"train": 0.0, "val": 0.0}
    assert report["scores"]["after"]["val"] == 1.0
    assert [e["epoch"] for e in report["epochs"]] == [0, 1]
    assert report["step_counts"] == {"total": 2, "accepted": 1, "rolled_back": 0, "no_update": 1, "failed": 0}
    assert report["usage"]["by_purpose"]["optimizer"]["calls"] == 1
    (prompt,) = report["prompts"]
    assert prompt["changed"] and prompt["final"] == "Reply with digits only."
    assert "-Answer the question.\n+Reply with digits only." in prompt["diff"]
    history = [(h["step"], h["status"], h["kept"]) for h in report["prompt_history"]]
    assert history == [(0, "initial", True), (1, "updated", True)]
    json.dumps(report)


def test_markdown_summary_shows_scores_table_and_diff(trained):
    text = render_markdown(build_report(trained), "score_curve.png")
    assert "| validation | 0.000 | 1.000 |" in text
    assert "```diff" in text and "+Reply with digits only." in text
    assert "| optimizer | 1 |" in text and "![score curve](score_curve.png)" in text
    assert "Models: all `scripted`." in text


def test_markdown_fences_survive_backticks_in_prompts():
    from afnio_langchain.train._report import _fence

    assert _fence("use ```python blocks```").startswith("````\n")


def test_write_report_writes_every_file_and_a_real_png(trained, tmp_path):
    files = write_report(trained, tmp_path / "out")
    assert json.loads(files.report.read_text())["files"]["plot"] == "score_curve.png"
    assert files.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files.summary.read_text().startswith("# afnio-langchain optimization report")
    saved = json.loads(files.prompts.read_text())
    params = [Variable("x", role="system prompt", requires_grad=True)]
    apply_prompts(params, saved)
    assert params[0].data == "Reply with digits only."
    with pytest.raises(ValueError, match="is for 'system prompt'"):
        apply_prompts([Variable("x", role="other", requires_grad=True)], saved)


def test_without_matplotlib_the_report_says_how_to_get_the_plot(trained, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    files = write_report(trained, tmp_path)
    assert files.plot is None and not (tmp_path / "score_curve.png").exists()
    assert "pip install 'afnio-langchain[plot]'" in files.summary.read_text()


def test_prompt_diff_of_equal_values_is_empty():
    assert prompt_diff("a", "a") == ""
    assert "+  \"c\"" in prompt_diff(["a"], ["a", "c"])
