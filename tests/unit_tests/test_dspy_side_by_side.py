"""The DSPy side-by-side example and the optimizer comparison benchmark run offline, and
the benchmark runs against an OpenAI-compatible endpoint (the loopback server)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("dspy")

from afnio_langchain.dspy import chat_adapter_reply  # noqa: E402
from afnio_langchain.models import required_keys_in  # noqa: E402
from afnio_langchain.testing import default_responder, request_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def load(monkeypatch, relative: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_endpoint(monkeypatch):
    monkeypatch.delenv("AFNIO_OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("AFNIO_MODEL", raising=False)


def test_example_runs_offline_and_both_optimizers_rewrite_instructions(
    monkeypatch, capsys, no_endpoint
):
    example = load(monkeypatch, "examples/dspy_side_by_side.py", "dspy_side_by_side")
    example.main()
    out = capsys.readouterr().out
    assert "OFFLINE" in out
    assert "student  val score   0.0% [scripted models]" in out
    assert (
        "ours     val score 100.0% [scripted models]  calls "
        "{'forward': 18, 'backward': 6, 'optimizer': 2}" in out
    )
    assert "GEPA     val score 100.0% [scripted models]" in out
    assert "including the name of its capital city" in out
    # 3 validation examples before, 3 in the minibatch, 3 to validate the rewrite
    assert "ours: candidate_programs scores [100.0, 0.0], total_calls 9" in out


def test_benchmark_offline_reports_calls_and_tokens_per_optimizer(
    monkeypatch, capsys, no_endpoint, tmp_path
):
    bench = load(monkeypatch, "benchmarks/dspy_compare.py", "dspy_compare")
    result = bench.main(["--json", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    assert out.startswith("OFFLINE PLUMBING RUN")
    rows = {row["optimizer"]: row for row in result["rows"]}
    assert set(rows) == {"tgd", "copro", "gepa"}
    # one step over 4 training examples of a 2-predictor program, gated on 4 validation
    # examples: 8 + 8 + 8 program calls, 4 failing examples x 2 calls backward, 2 rewrites
    assert rows["tgd"]["calls"] == {"forward": 24, "backward": 8, "optimizer": 2}
    # COPRO breadth=2, depth=1: 2 predictors x 2 candidates x 4 examples x 2 calls, 2 proposals
    assert rows["copro"]["calls"] == {"forward": 32, "optimizer": 2}
    assert rows["gepa"]["calls"]["optimizer"] >= 1
    assert all(row["score_before"] == 0.0 and row["input_tokens"] > 0 for row in rows.values())
    assert rows["tgd"]["score_after"] == 1.0
    assert json.loads((tmp_path / "out.json").read_text())["rows"][0]["optimizer"] == "tgd"


def test_benchmark_against_an_openai_compatible_endpoint(monkeypatch, capsys, openai_server):
    bench = load(monkeypatch, "benchmarks/dspy_compare.py", "dspy_compare")
    program_replies = chat_adapter_reply(
        {
            "facts": bench._facts,
            "capital": bench._capital,
            "proposed_instruction": bench._proposal,
            "proposed_prefix_for_output_field": "Answer:",
            "new_instruction": bench._proposal,
        }
    )

    def responder(body):
        text = request_text(body)
        return default_responder(body) if required_keys_in(text) else program_replies(text)

    openai_server.responder = responder
    monkeypatch.setenv("AFNIO_OPENAI_BASE_URL", openai_server.base_url)
    monkeypatch.setenv("AFNIO_MODEL", "fake-model")
    result = bench.main(["--optimizers", "tgd", "copro", "--threads", "2"])
    assert "Endpoint run: model 'fake-model'" in capsys.readouterr().out
    assert result["offline"] is False
    rows = {row["optimizer"]: row for row in result["rows"]}
    assert rows["tgd"]["calls"]["backward"] == 8 and rows["copro"]["calls"]["optimizer"] == 2
    assert {body["model"] for body in openai_server.requests} == {"fake-model"}
