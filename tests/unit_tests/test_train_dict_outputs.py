"""Chains whose output is a dict (``JsonOutputParser``, as LangChain's extraction guides
end them) train as they are: the metric scores the whole dict, its feedback reaches the
prompt once through every field, and the built-in metrics compare a dict output with a
dict target field by field as text."""

from __future__ import annotations

import asyncio
import json
import textwrap

from langchain_core.output_parsers import JsonOutputParser
from langchain_core.prompts import ChatPromptTemplate

from afnio_langchain import Variable
from afnio_langchain.autodiff import ParseJson, run_backward
from afnio_langchain.cli import main
from afnio_langchain.loop import ExactMatch, prediction_text
from afnio_langchain.testing import ScriptedChatModel
from afnio_langchain.train import MetricResult, fit

FEEDBACK = "Give the country as well as the city."
BETTER = "Extract the city and its country as JSON with keys city and country."


def _extractor() -> tuple[ChatPromptTemplate, ScriptedChatModel]:
    def answer(request) -> str:
        text = str(request)
        if "country" in text.split("\n")[0]:  # the system prompt asks for the country
            return '{"city": "Rome", "country": "Italy"}'
        return '{"city": "Rome", "country": ""}'

    model = ScriptedChatModel(forward=answer, feedback=FEEDBACK, optimizer=BETTER)
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Extract the city as JSON with key city."), ("human", "{text}")]
    )
    return prompt, model


DATA = [{"text": "I live in Rome", "answer": {"city": "Rome", "country": "Italy"}}] * 2


def test_fit_trains_a_json_chain_on_its_whole_dict_output():
    prompt, model = _extractor()
    seen: list[object] = []

    def both_fields(example, prediction):
        seen.append(prediction)
        got = {key: value.data for key, value in prediction.items()}
        ok = got == example["answer"]
        return MetricResult(float(ok), "" if ok else FEEDBACK)

    result = fit(prompt | model | JsonOutputParser(), DATA, DATA, metric=both_fields,
                 backward_model=model, optimizer_model=model, epochs=1, batch_size=2,
                 progress=False)

    assert all(set(p) == {"city", "country"} for p in seen)  # the metric saw the whole dict
    (param,) = result.history["steps"][0]["params"]
    assert param["gradients"] == 2  # one per example, not one per field
    assert param["new_value"] == BETTER
    assert (result.baseline["val"], result.best_val) == (0.0, 1.0)
    # The backward request names both fields once, with the feedback once.
    request = model.calls_of("backward")[0].text
    assert request.count(FEEDBACK) == 1
    assert 'Fields "city", "country": ' + FEEDBACK in request


def test_exact_match_compares_a_dict_output_with_a_dict_target_as_text():
    metric = ExactMatch()
    output = {"country": Variable("Italy"), "city": Variable("Rome"), "age": Variable("36")}
    assert metric({"answer": {"city": "Rome", "country": "Italy", "age": 36}}, output).score == 1.0
    wrong = metric({"answer": {"city": "Rome", "country": "France", "age": 36}}, output)
    assert wrong.score == 0.0
    assert '"country": "France"' in wrong.feedback and '"country": "Italy"' in wrong.feedback
    assert prediction_text(output) == '{"age": "36", "city": "Rome", "country": "Italy"}'


def test_json_feedback_given_to_several_fields_goes_back_once():
    reply = Variable('{"a": "1", "b": "2", "c": "3"}', role="reply", requires_grad=True)
    a, b, c = ParseJson.apply(reply)
    asyncio.run(run_backward([(a, "Too short."), (b, "Too short."), (c, "Use words.")]))
    assert [g.data for g in reply.grad] == ['Fields "a", "b": Too short.\nField "c": Use words.']


CHAIN_FILE = textwrap.dedent(
    '''
    from langchain_core.output_parsers import JsonOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from afnio_langchain.testing import ScriptedChatModel

    # A ready-made chain: it keeps its own model (here an offline fake answering JSON).
    model = ScriptedChatModel(forward='{"city": "Rome", "country": ""}')
    extract = (
        ChatPromptTemplate.from_messages(
            [("system", "Extract the city as JSON with key city."), ("human", "{text}")]
        )
        | model
        | JsonOutputParser()
    )
    '''
)


def test_the_cli_trains_a_json_chain_with_exact_match_on_object_targets(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "extraction.py").write_text(CHAIN_FILE)
    rows = "".join(json.dumps(row) + "\n" for row in DATA)
    (tmp_path / "train.jsonl").write_text(rows)
    status = main(["optimize", "--chain", "extraction.py:extract", "--train", "train.jsonl",
                   "--val", "train.jsonl", "--metric", "exact_match", "--model", "scripted",
                   "--epochs", "1", "--batch-size", "2", "--out", "run", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (step,) = report["steps"]
    assert step["feedback_items"] == 2 and step["backward_errors"] == 0
    assert step["params"][0]["gradients"] == 2
