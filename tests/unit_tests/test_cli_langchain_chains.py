"""The command line on chains written the ordinary LangChain way, through real
``ChatOpenAI`` clients against the loopback OpenAI-compatible server: a plain
``prompt | model | StrOutputParser()`` factory and a ready-made chain object both train
and evaluate with ``--model openai-compatible:NAME@URL``; the saved prompts load back
through ``evaluate --prompts`` and ``TrainableChain.load``. Hermetic (loopback only)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

pytest.importorskip("langchain_openai")

from afnio_langchain.cli import main
from afnio_langchain.models import required_keys_in
from afnio_langchain.testing import request_text

# The README's pattern, as a LangChain user writes it (nothing from afnio_langchain).
APP = textwrap.dedent(
    '''
    import os

    from langchain_core.language_models import BaseChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    SYSTEM = "Answer the arithmetic question with a number."
    received = []

    def build_qa(model):
        assert isinstance(model, BaseChatModel), type(model)
        received.append(type(model).__name__)
        prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
        return prompt | model | StrOutputParser()

    # A ready-made chain: its model is chosen here.
    ready = (
        ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
        | ChatOpenAI(model="ready-model", base_url=os.environ["APP_BASE_URL"], api_key="sk-app")
        | StrOutputParser()
    )

    def two_steps(model):
        draft = ChatPromptTemplate.from_messages([("system", "Draft an answer."), ("human", "{question}")])
        final = ChatPromptTemplate.from_messages([("system", "Polish the draft."), ("human", "{draft}")])
        return (draft | model | StrOutputParser()) | (lambda text: {"draft": text}) | final | model | StrOutputParser()

    # LangChain's RAG tutorial shape: the chain takes the question itself, not a dict.
    def rag(model):
        from langchain_core.runnables import RunnablePassthrough

        prompt = ChatPromptTemplate.from_messages(
            [("system", "Use the context to answer."), ("human", "Context: {context}\\nQuestion: {question}")])
        notes = lambda question: "Sums of a number with itself are twice the number."
        return {"context": notes, "question": RunnablePassthrough()} | prompt | model | StrOutputParser()

    # A factory whose parameter is not called model.
    def with_llm(llm):
        received.append(type(llm).__name__)
        return ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")]) | llm

    # A reply tidied by a function after the parser.
    def tidied(model):
        from langchain_core.runnables import RunnableLambda

        prompt = ChatPromptTemplate.from_messages([("system", SYSTEM), ("human", "{question}")])
        return prompt | model | StrOutputParser() | RunnableLambda(lambda s: s.strip().rstrip("."))

    # One human message and no system message (ChatPromptTemplate.from_template).
    def one_message(model):
        return ChatPromptTemplate.from_template(SYSTEM + " {question}") | model | StrOutputParser()

    # A string prompt, as many of LangChain's guides write it.
    def string_prompt(model):
        from langchain_core.prompts import PromptTemplate

        return PromptTemplate.from_template(SYSTEM + " Question: {question}") | model | StrOutputParser()
    '''
)


@pytest.fixture
def app(tmp_path, monkeypatch, openai_server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APP_BASE_URL", openai_server.base_url)
    monkeypatch.delitem(sys.modules, "my_app", raising=False)  # each test imports its own
    (tmp_path / "my_app.py").write_text(APP)
    rows = [{"question": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(1, 5)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "val.jsonl").write_text(json.dumps({"question": "What is 5+5?", "answer": "10"}) + "\n")
    # Echo a correct answer for question 1 only, so one item is right and the rest get feedback.
    default = openai_server.responder

    def responder(body):
        text = request_text(body)
        if required_keys_in(text) is None and "1+1" in text:
            return "2"
        return default(body)

    openai_server.responder = responder
    return tmp_path


def spec(server, name="loopback"):
    return f"openai-compatible:{name}@{server.base_url}"


def optimize(app, server, chain, *extra, out="run"):
    return main([
        "optimize", "--chain", chain, "--train", str(app / "train.jsonl"), "--val",
        str(app / "val.jsonl"), "--metric", "exact_match", "--model", spec(server),
        "--epochs", "1", "--batch-size", "2", "--out", str(app / out), "--no-progress", *extra,
    ])


def structured_requests(server):
    return [b for b in server.requests if required_keys_in(request_text(b))]


def test_a_plain_lcel_factory_trains_with_chat_openai(app, openai_server, capsys):
    assert optimize(app, openai_server, "my_app:build_qa") == 0
    import my_app

    assert set(my_app.received) == {"ChatOpenAI"}
    report = json.loads((app / "run" / "report.json").read_text())
    by_purpose = report["usage"]["by_purpose"]
    assert by_purpose["forward"]["calls"] > 0 and by_purpose["backward"]["calls"] > 0
    assert by_purpose["optimizer"]["calls"] > 0
    assert openai_server.request_count == report["usage"]["total"]["calls"]
    forward = [b for b in openai_server.requests if not required_keys_in(request_text(b))]
    assert forward and all(b["model"] == "loopback" for b in forward)
    assert forward[0]["messages"][0] == {"role": "system", "content": my_app.SYSTEM}
    # Every backward and optimizer request carries the JSON schema of the keys it asks for.
    structured = structured_requests(openai_server)
    assert len(structured) == by_purpose["backward"]["calls"] + by_purpose["optimizer"]["calls"]
    for body in structured:
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["required"] == required_keys_in(request_text(body))
    printed = capsys.readouterr().out
    assert "Steps: 2 (" in printed and "Validation score:" in printed


def test_the_trained_prompts_of_a_factory_evaluate_and_load_into_the_chain(app, openai_server, capsys):
    assert optimize(app, openai_server, "my_app:build_qa") == 0
    prompts = app / "run" / "prompts.json"
    learned = json.loads(prompts.read_text())["prompts"][0]
    assert learned["key"] == "prompt_0.message_0"
    capsys.readouterr()
    before = openai_server.request_count
    argv = ["evaluate", "--chain", "my_app:build_qa", "--data", str(app / "train.jsonl"),
            "--metric", "exact_match", "--model", spec(openai_server), "--prompts", str(prompts)]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("score: 0.250 on 4 example(s) (0 error(s))")
    sent = openai_server.requests[before:]
    assert len(sent) == 4 and all(b["messages"][0]["content"] == learned["value"] for b in sent)

    # The same file loads into the chain through the Python API, and TrainableChain.save
    # writes a file that evaluate reads.
    import my_app
    from langchain_openai import ChatOpenAI

    from afnio_langchain import make_trainable

    chain = make_trainable(my_app.build_qa(ChatOpenAI(model="loopback", base_url=openai_server.base_url, api_key="k")))
    chain.load(prompts)
    assert chain.parameters()[0].data == learned["value"]
    chain.parameters()[0].data = "Reply with digits only."
    chain.save(app / "mine.json")
    argv[argv.index("--prompts") + 1] = str(app / "mine.json")
    before = openai_server.request_count
    assert main(argv) == 0
    assert {b["messages"][0]["content"] for b in openai_server.requests[before:]} == {"Reply with digits only."}


def test_a_ready_made_chain_object_trains_and_evaluates(app, openai_server, capsys):
    assert optimize(app, openai_server, "my_app:ready") == 0
    report = json.loads((app / "run" / "report.json").read_text())
    assert report["status"] == "finished"
    models = {b["model"] for b in openai_server.requests}
    assert models == {"ready-model", "loopback"}  # its own model forward, ours for the rest
    assert all(b["model"] == "loopback" for b in structured_requests(openai_server))
    capsys.readouterr()
    argv = ["evaluate", "--chain", "my_app:ready", "--data", str(app / "train.jsonl"),
            "--metric", "exact_match", "--prompts", str(app / "run" / "prompts.json")]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("score: 0.250 on 4 example(s)")
    # A forward model cannot be given to a ready-made chain: one line, exit 2.
    assert main([*argv, "--forward-model", spec(openai_server)]) == 2
    assert "is a ready-made chain" in capsys.readouterr().err


def test_the_plan_counts_every_llm_step_of_the_chain(app, openai_server, capsys):
    assert optimize(app, openai_server, "my_app:two_steps") == 0
    printed = capsys.readouterr().out
    plan = next(line for line in printed.splitlines() if line.startswith("plan:"))
    assert "2 LLM call(s) per example" in plan
    estimate = int(plan.split("at most about ")[1].split()[0])
    report = json.loads((app / "run" / "report.json").read_text())
    made = report["usage"]["total"]["calls"]
    assert made <= estimate
    # The two steps' prompts are trained: one gradient request per step per failed item.
    assert len(report["prompts"]) == 2


def test_a_chain_that_takes_the_question_itself_gets_the_question(app, openai_server, capsys):
    """{"context": retriever, "question": RunnablePassthrough()} | prompt | model: LangChain
    names its input "root"; the CLI once asked the rows for a field of that name."""
    assert optimize(app, openai_server, "my_app:rag", "--input-keys", "question") == 0
    forward = [b for b in openai_server.requests if not required_keys_in(request_text(b))]
    user = forward[0]["messages"][-1]["content"]
    assert user.startswith("Context: Sums of") and user.split("Question: ")[1].startswith("What is ")
    assert main(["evaluate", "--chain", "my_app:rag", "--data", str(app / "val.jsonl"),
                 "--metric", "exact_match", "--model", spec(openai_server)]) == 0
    assert "Question: What is 5+5?" in openai_server.requests[-1]["messages"][-1]["content"]


def test_a_chain_that_tidies_its_reply_with_a_function_trains(app, openai_server, capsys):
    assert optimize(app, openai_server, "my_app:tidied") == 0
    report = json.loads((app / "run" / "report.json").read_text())
    assert report["usage"]["by_purpose"]["backward"]["calls"] > 0
    assert report["steps"] and all(step["errors"] == 0 and step["backward_errors"] == 0 for step in report["steps"])
    assert report["steps"][0]["params"][0]["gradients"] > 0


def test_a_factory_whose_model_parameter_has_another_name_gets_the_model(app, openai_server):
    assert optimize(app, openai_server, "my_app:with_llm") == 0
    import my_app

    assert my_app.received == ["ChatOpenAI"]


def test_a_chain_with_a_string_prompt_trains_and_its_prompt_evaluates(app, openai_server, capsys):
    assert optimize(app, openai_server, "my_app:string_prompt") == 0
    report = json.loads((app / "run" / "report.json").read_text())
    assert report["steps"][0]["params"][0]["gradients"] > 0
    forward = [b for b in openai_server.requests if not required_keys_in(request_text(b))]
    import my_app

    # One human message, as ChatOpenAI sends a string prompt; the first step used the seed.
    assert all(len(b["messages"]) == 1 and b["messages"][0]["role"] == "user" for b in forward)
    assert {"role": "user", "content": my_app.SYSTEM + " Question: What is 1+1?"} in [
        b["messages"][0] for b in forward
    ]
    learned = json.loads((app / "run" / "prompts.json").read_text())["prompts"][0]
    assert learned["role"] == "prompt (a template: keep {question} as written)"
    capsys.readouterr()
    before = openai_server.request_count
    assert main(["evaluate", "--chain", "my_app:string_prompt", "--data", str(app / "val.jsonl"),
                 "--metric", "exact_match", "--model", spec(openai_server),
                 "--prompts", str(app / "run" / "prompts.json")]) == 0
    (sent,) = openai_server.requests[before:]
    assert sent["messages"] == [
        {"role": "user", "content": learned["value"].replace("{question}", "What is 5+5?")}
    ]


def test_roles_choose_the_messages_a_chain_without_a_system_prompt_trains(app, openai_server, capsys):
    before = openai_server.request_count
    assert optimize(app, openai_server, "my_app:one_message", out="refused") == 2
    err = capsys.readouterr().err
    assert "none has a message of roles ['system']" in err and "--roles system,user" in err
    assert openai_server.request_count == before  # refused before any model call

    assert optimize(app, openai_server, "my_app:one_message", "--roles", "system,user") == 0
    report = json.loads((app / "run" / "report.json").read_text())
    assert report["config"]["roles"] == ["system", "user"]
    learned = json.loads((app / "run" / "prompts.json").read_text())["prompts"]
    assert [p["role"] for p in learned] == ["user prompt (a template: keep {question} as written)"]
    assert main(["evaluate", "--chain", "my_app:one_message", "--roles", "user", "--data",
                 str(app / "val.jsonl"), "--metric", "exact_match", "--model", spec(openai_server),
                 "--prompts", str(app / "run" / "prompts.json")]) == 0
    with pytest.raises(SystemExit):
        main(["evaluate", "--chain", "my_app:one_message", "--roles", "tools", "--data",
              str(app / "val.jsonl"), "--metric", "exact_match"])
    assert "expected a comma-separated list of system, user, assistant" in capsys.readouterr().err
