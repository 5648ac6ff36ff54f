"""``afnio-langchain export``: a run's prompts file written into the chain's own LangChain
templates, which an app then loads with LangChain alone (``langchain_core.load``). The
chains are written the ordinary LangChain way, in a file of their own; no model is
called."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from afnio_langchain.cli import main

APP = textwrap.dedent(
    '''
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import (
        ChatPromptTemplate,
        FewShotChatMessagePromptTemplate,
        PromptTemplate,
    )

    def build_qa(model):
        prompt = ChatPromptTemplate.from_messages(
            [("system", "Answer in {language}."), ("human", "{question}")]
        )
        return prompt | model | StrOutputParser()

    def string_prompt(llm):
        return PromptTemplate.from_template("Answer in one word: {question}") | llm

    def few_shot(model):
        example = ChatPromptTemplate.from_messages([("human", "{input}"), ("ai", "{output}")])
        shots = FewShotChatMessagePromptTemplate(
            example_prompt=example, examples=[{"input": "2 + 2", "output": "4"}]
        )
        prompt = ChatPromptTemplate.from_messages(
            [("system", "You do sums."), shots, ("human", "{question}")]
        )
        return prompt | model
    '''
)


@pytest.fixture
def app(tmp_path, monkeypatch):
    (tmp_path / "my_chains.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _prompts_file(path, key, role, value):
    path.write_text(json.dumps({
        "format": "afnio_langchain.prompts", "version": 2,
        "prompts": [{"index": 0, "key": key, "role": role, "value": value}],
    }))
    return path


LEARNED = 'Answer in {language}, as {"answer": ...}, nothing else.'


def test_export_writes_templates_an_app_loads_with_langchain_alone(app, capsys):
    prompts = _prompts_file(app / "prompts.json", "prompt_0.message_0",
                            "system prompt (a template: keep {language} as written)", LEARNED)
    status = main(["export", "--chain", "my_chains.py:build_qa", "--prompts", str(prompts),
                   "--out", "out/learned.json"])
    assert status == 0
    printed = capsys.readouterr().out
    # Printed as LangChain's template text: the field kept, the other braces escaped.
    assert 'Answer in {language}, as {{"answer": ...}}, nothing else.' in printed
    assert "prompt_0.message_0 (system prompt" in printed

    # A separate interpreter that never imports afnio_langchain loads and formats it.
    loader = textwrap.dedent(
        """
        import json, sys
        from langchain_core.load import load
        data = json.load(open("out/learned.json"))
        assert data["format"] == "langchain_core.load", data["format"]
        prompt = load(data["templates"]["prompt_0"], allowed_objects="core")
        messages = prompt.invoke({"language": "Italian", "question": "Capital of France?"})
        print(json.dumps([m.content for m in messages.to_messages()]))
        assert "afnio_langchain" not in sys.modules
        """
    )
    done = subprocess.run([sys.executable, "-c", loader], capture_output=True, text=True,
                          cwd=app, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        'Answer in Italian, as {"answer": ...}, nothing else.',
        "Capital of France?",
    ]


@pytest.mark.filterwarnings("ignore::langchain_core._api.beta_decorator.LangChainBetaWarning")
def test_a_string_prompt_exports_as_a_prompt_template(app, capsys):
    prompts = _prompts_file(app / "p.json", "prompt_0.message_0",
                            "prompt (a template: keep {question} as written)",
                            "Reply with one word only. {question}")
    assert main(["export", "--chain", "my_chains.py:string_prompt", "--prompts", str(prompts),
                 "--out", "learned.json"]) == 0
    from langchain_core.load import load

    data = json.loads((app / "learned.json").read_text())
    template = load(data["templates"]["prompt_0"], allowed_objects="core")
    assert template.format(question="Capital of Spain?") == "Reply with one word only. Capital of Spain?"
    assert "Reply with one word only. {question}" in capsys.readouterr().out


def test_a_template_langchain_cannot_serialize_is_printed_not_written(app, capsys):
    prompts = _prompts_file(app / "p.json", "prompt_0.message_0", "system prompt",
                            "You add the numbers and reply with the sum only.")
    assert main(["export", "--chain", "my_chains.py:few_shot", "--prompts", str(prompts),
                 "--out", "learned.json"]) == 2
    err = capsys.readouterr().err
    assert "FewShotChatMessagePromptTemplate" in err and "nothing was written" in err
    assert not (app / "learned.json").exists()

    assert main(["export", "--chain", "my_chains.py:few_shot", "--prompts", str(prompts)]) == 0
    assert "You add the numbers and reply with the sum only." in capsys.readouterr().out


def test_a_prompts_file_of_another_chain_is_refused(app, capsys):
    prompts = _prompts_file(app / "p.json", "prompt_0.message_0", "user prompt", "Hi {question}")
    assert main(["export", "--chain", "my_chains.py:build_qa", "--prompts", str(prompts),
                 "--out", "learned.json"]) == 2
    assert "is for 'user prompt', but parameter 0 is 'system prompt" in capsys.readouterr().err
    assert not (app / "learned.json").exists()


def test_a_chain_of_afnio_variables_has_no_template_to_export(app, capsys):
    (app / "own.py").write_text(textwrap.dedent(
        """
        from afnio_langchain import Variable
        from afnio_langchain.runnables import ChatCompletionRunnable
        from afnio_langchain.testing import ScriptedChatModel

        system = Variable("Be brief.", role="system prompt", requires_grad=True)
        chain = ChatCompletionRunnable(
            model=ScriptedChatModel(forward="ok"),
            messages=[{"role": "system", "content": [system]},
                      {"role": "user", "content": ["{question}"]}],
        )
        """
    ))
    prompts = _prompts_file(app / "p.json", None, "system prompt", "Be very brief.")
    assert main(["export", "--chain", "own.py:chain", "--prompts", str(prompts)]) == 2
    assert "no template to export" in capsys.readouterr().err
