"""Reports and the one prompts file: the plot's legend shows only what happened (a red x
only when a step was rolled back), step outcomes add up, per-example errors are listed,
and ``TrainableChain.save``/``load``, ``prompts.json`` and ``apply_prompts`` read each
other's files, refusing a file of another kind in one clear message. Hermetic."""

from __future__ import annotations

import json

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from matplotlib.colors import to_hex

from afnio_langchain import ChatCompletionRunnable, Variable, make_trainable
from afnio_langchain.runnables import PromptsFileError, load_prompts, read_prompts_file
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import apply_prompts, exact_match, fit, write_report
from afnio_langchain.train._report import build_report, score_figure


def legend(report):
    axes = score_figure(report).axes[0]
    handles, labels = axes.get_legend_handles_labels()
    colours = {}
    for handle, label in zip(handles, labels):
        if label.startswith("validation after"):
            colours[label] = to_hex(handle.get_facecolor()[0] if len(handle.get_facecolor()) else handle.get_edgecolor()[0])
    return labels, colours


def run(forward, optimizer="Answer with digits.", **options):
    model = ScriptedChatModel(forward=forward, feedback="Use digits.", optimizer=optimizer)
    system = Variable("Answer the question.", role="system prompt", requires_grad=True)
    chain = ChatCompletionRunnable(model=model, messages=[("system", system), ("user", "{q}")])
    data = [{"q": "2+2?", "answer": "4"}, {"q": "3+3?", "answer": "6"}]
    return fit(chain, data, val=data, metric=exact_match, optimizer_model=model,
               backward_model=model, progress=False, batch_size=1, **options)


def test_the_legend_has_no_red_x_when_every_step_was_kept():
    result = run(lambda text: "4" if "digits" in text else "four", gate="off")
    report = build_report(result)
    # gate="off": no step is validated, so no step marker at all.
    labels, colours = legend(report)
    assert not colours
    kept = run(lambda text: ("4" if "2+2" in text else "6") if "digits" in text else "no")
    labels, colours = legend(build_report(kept))
    assert colours == {"validation after a kept step": to_hex("tab:green")}


def test_the_legend_shows_red_only_for_rolled_back_steps():
    # Every proposal makes the score worse: rolled back.
    result = run(lambda text: "x" if "Worse" in text else ("4" if "2+2" in text else "no"),
                 optimizer="Worse prompt.")
    report = build_report(result)
    assert report["step_counts"]["rolled_back"] >= 1
    labels, colours = legend(report)
    assert colours == {"validation after a rolled-back step": to_hex("tab:red")}


def test_step_outcomes_add_up_and_errors_are_listed_with_index_and_message(tmp_path):
    def forward(text):
        if "3+3" in text:
            raise ValueError("the provider refused this one")
        return "4"

    result = run(forward, gate="off", epochs=2)
    report = build_report(result)
    counts = report["step_counts"]
    assert counts["total"] == sum(counts[k] for k in ("accepted", "rolled_back", "no_update", "failed"))
    errors = report["errors"]
    assert errors["total"] >= 2
    assert errors["shown"][0] == {
        "where": "validation set, before training", "index": 1,
        "error": "ValueError: the provider refused this one",
    }
    files = write_report(result, tmp_path)
    summary = files.summary.read_text()
    assert "## Errors" in summary and "example 1: ValueError: the provider refused this one" in summary
    assert "without an update" in summary


def chain_and_model():
    model = ScriptedChatModel(forward="ok")
    prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("human", "{q}")])
    return make_trainable(prompt | model | StrOutputParser())


def test_one_prompts_file_for_save_load_reports_and_apply_prompts(tmp_path):
    chain = chain_and_model()
    chain.parameters()[0].data = "Be exact."
    chain.save(tmp_path / "prompts.json")
    saved = json.loads((tmp_path / "prompts.json").read_text())
    assert saved == {"format": "afnio_langchain.prompts", "version": 2, "prompts": [
        {"index": 0, "key": "prompt_0.message_0", "role": "system prompt", "value": "Be exact."}]}
    # apply_prompts (the CLI's evaluate --prompts) reads what save wrote...
    other = chain_and_model()
    apply_prompts(other.parameters(), read_prompts_file(tmp_path / "prompts.json"), chain=other)
    assert other.parameters()[0].data == "Be exact."
    # ...and TrainableChain.load reads the trainer's prompts.json.
    model = ScriptedChatModel(forward="ok", feedback="f", optimizer="Learned.")
    trained = fit(chain_and_model(), [{"q": "x", "answer": "y"}], metric=exact_match,
                  optimizer_model=model, backward_model=model, progress=False)
    files = write_report(trained, tmp_path / "run")
    fresh = chain_and_model().load(files.prompts)
    assert fresh.parameters()[0].data == "Learned."


def test_files_of_earlier_versions_still_load(tmp_path):
    chain = chain_and_model()
    old_chain_file = {"format": "afnio-langchain/trainable-chain", "version": 1,
                      "prompts": [{"key": "prompt_0.message_0", "role": "system prompt", "value": "Old."}]}
    chain.load_state_dict(old_chain_file)
    assert chain.parameters()[0].data == "Old."
    old_report_file = {"format": "afnio_langchain.prompts", "version": 1,
                       "params": [{"index": 0, "role": "system prompt", "value": "Older."}]}
    load_prompts(chain.parameters(), old_report_file)
    assert chain.parameters()[0].data == "Older."


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"format": "afnio_langchain.report", "version": 1}, "is a training report (report.json), not a prompts file"),
        ({"format": "afnio_langchain.checkpoint", "version": 1}, "is a training checkpoint (checkpoint.json), not a prompts file"),
        ({"hello": "world"}, "is not an afnio-langchain prompts file"),
        ({"format": "afnio_langchain.prompts", "version": 3, "prompts": []}, "has version 3; this package reads versions up to 2"),
        ({"format": "afnio_langchain.prompts", "version": 2, "prompts": [{"index": 0, "key": "prompt_9.message_0", "role": "system prompt", "value": "x"}]}, "missing ['prompt_0.message_0'], unknown ['prompt_9.message_0']"),
        ({"format": "afnio_langchain.prompts", "version": 2, "prompts": [{"index": 0, "role": "judge prompt", "value": "x"}]}, "entry 0 is for 'judge prompt', but parameter 0 is 'system prompt'"),
    ],
)
def test_a_file_of_another_kind_is_refused_clearly(tmp_path, content, message):
    path = tmp_path / "file.json"
    path.write_text(json.dumps(content))
    chain = chain_and_model()
    with pytest.raises(PromptsFileError) as info:
        chain.load(path)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert chain.parameters()[0].data == "Be brief."  # nothing was written
    path.write_text("{not json")
    with pytest.raises(PromptsFileError, match="not valid JSON"):
        chain.load(path)
