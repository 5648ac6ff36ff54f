"""Text edge cases are data: lone surrogates and NUL bytes anywhere never crash hashing,
checkpoints, reports or file writes; an undecodable dataset gives one line with its line
number and exit status 2."""

from __future__ import annotations

import json

import pytest

from afnio_langchain import ChatCompletionRunnable, Variable
from afnio_langchain.cli import main
from afnio_langchain.train import fit, load_checkpoint, write_report

from .conftest import make_client
from .test_checkpoints_as_data import cli_args, project  # noqa: F401 - fixture

ODD = ["caf\udce9", "\ud83d alone", "nul\x00byte", "tail\udfff", "\x00"]


def test_lone_surrogates_and_nul_bytes_in_examples_train_and_checkpoint(client, tmp_path):
    system = Variable("Answer \udce9.\x00", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=client, messages=[("system", system), ("user", "{q}")])
    data = [{"q": text, "answer": text} for text in ODD]
    result = fit(
        chain, data, data[:2], metric=lambda ex, pred: 0.0, optimizer_model=client,
        backward_model=client, batch_size=5, progress=False, checkpoint_path=tmp_path / "c.json",
    )
    assert result.state.steps_done == 1
    state = load_checkpoint(tmp_path / "c.json")
    assert state.initial_values == ["Answer \udce9.\x00"]
    files = write_report(result, tmp_path / "report")
    for path in (files.report, files.prompts, files.summary):
        path.read_bytes().decode("utf-8")  # valid UTF-8 on disk


def test_a_proposal_with_a_lone_surrogate_is_refused_and_the_cli_writes_its_report(
    project, server, oracle, capsys  # noqa: F811 - fixture
):
    """A lone surrogate is no text (it reaches a model as U+FFFD), so a proposal holding
    one is refused like any unusable reply; the run still writes valid UTF-8."""
    oracle.proposal = "Answer \ud800 briefly.\x00"
    assert main(cli_args(project, server, "--epochs", "1")) == 0
    run = project / "run"
    saved = json.loads((run / "prompts.json").read_text(encoding="utf-8"))  # valid UTF-8 on disk
    assert "\ud800" not in saved["prompts"][0]["value"]
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert all(not step["decision"].startswith("accepted") for step in report["steps"])
    (run / "summary.md").read_bytes().decode("utf-8")


@pytest.mark.parametrize("where", ["first", "later"])
def test_an_undecodable_dataset_is_one_line_with_its_line_number(
    project, server, capsys, where  # noqa: F811 - fixture
):
    good = b'{"question": "What is 1+1?", "answer": "2"}\n'
    bad = b'{"question": "caf\xe9?", "answer": "2"}\n'
    lines = [bad, good, good] if where == "first" else [good, good, bad]
    (project / "train.jsonl").write_bytes(b"".join(lines))
    assert main(cli_args(project, server, "--epochs", "1")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    line = 1 if where == "first" else 3
    assert f"line {line}" in err and "UTF-8" in err and "Traceback" not in err


def test_an_undecodable_csv_is_one_line_with_its_line_number(project, server, capsys):  # noqa: F811
    (project / "val.csv").write_bytes(b"question,answer\nWhat is 1+1?,2\ncaf\xe9?,3\n")
    assert main([*cli_args(project, server, "--epochs", "1"), "--val", str(project / "val.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "line 3" in err and "UTF-8" in err


def test_make_client_round_trips_odd_text(client_kind, server, oracle):
    oracle.forward_text = "ok"
    client = make_client(client_kind, server)
    reply = client.complete([{"role": "user", "content": "caf\udce9 \x00 \ud83d"}])
    assert reply.text == "ok"
    sent = server.requests[-1].body["messages"][0]["content"]
    assert "\x00" not in sent and "\ufffd" in sent
