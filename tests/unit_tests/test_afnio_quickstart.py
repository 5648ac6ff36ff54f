"""afnio's README quickstart (the Facility Support classifier: a ``cognitive.Module``,
DataLoaders with a weighted sampler, ``Trainer.fit``, TGD) trains offline, on the
scripted model and through the loopback OpenAI-compatible server.

The script is ``examples/afnio_facility_support.py``: afnio's quickstart code (afnio
0.3.7's README, AGPL-3.0, https://github.com/Tellurio-AI/afnio) with its imports
changed, on a small dataset in the real one's format shipped beside it.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

import afnio_langchain as afnio

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "afnio_facility_support.py"


@pytest.fixture
def example(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the Trainer writes ./checkpoints, as afnio's does
    spec = importlib.util.spec_from_file_location("afnio_facility_support", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    afnio.set_backward_model(None)


def check_trained(summary, example):
    # --seed 2: the weighted sampler's first draw holds polite complaints (the
    # quickstart draws at random; a draw without any would give nothing to learn).
    # The stand-in model mislabels polite complaints until its prompt says otherwise;
    # the run learns that rule from the feedback and the gate keeps it.
    assert summary["test_accuracy_before"] == pytest.approx(7 / 12)
    assert summary["test_accuracy_after"] == 1.0
    assert summary["system_prompt"] == example.PROPOSAL
    epochs = summary["history"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs[-1]["val_accuracy"] == 1.0
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(epochs[0])
    logged = {m["name"] for m in summary["logged_metrics"]}
    assert {"train_accuracy", "val_accuracy", "test_accuracy"} <= logged
    checkpoint = afnio.load(summary["checkpoint"])
    assert checkpoint["epoch"] == 2
    assert checkpoint["agent_state_dict"]["sentiment_task"].data == example.PROPOSAL


def test_quickstart_trains_offline_on_the_scripted_model(example, capsys):
    summary = example.main(["--epochs", "2", "--seed", "2"])
    check_trained(summary, example)
    assert "Test accuracy: 0.583 -> 1.000" in capsys.readouterr().out


def test_quickstart_trains_through_the_loopback_openai_server(example):
    summary = example.main(["--epochs", "2", "--seed", "2", "--loopback"])
    check_trained(summary, example)
