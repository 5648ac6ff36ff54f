"""Secrets are masked before any truncation, everywhere: error excerpts, reprs, traces,
every run file (the prompts file included) and stdout; keys in headers, default headers
and URL userinfo are secrets too."""

from __future__ import annotations

import json

import openai
import pytest
from langchain_core.tracers.context import collect_runs
from langchain_openai import ChatOpenAI

from afnio_langchain import Variable
from afnio_langchain.autodiff import BackwardError, ChatCompletion
from afnio_langchain.cli import main
from afnio_langchain.models import LangChainChatModelClient, OpenAIClient
from afnio_langchain.optim import TGD

from ._stdlib_server import Reply
from .conftest import FAST, KEY, MODEL
from .test_checkpoints_as_data import cli_args, project  # noqa: F401 - fixture

HEADER_KEY = "sk-header-ONLYINHEADERS-91b7c3d5e2f4"
USERINFO_KEY = "sk-userinfo-ONLYINURL-5d3c2b1a0f9e"
MESSAGES = [{"role": "user", "content": [Variable("hi")]}]


def straddling(at: int, key: str = KEY) -> str:
    """A garbage body with ``key`` starting ``at`` characters in."""
    return "x" * at + key + " trailing text" * 20


@pytest.mark.parametrize("at", [280, 290, 300, 495])
def test_a_body_excerpt_is_masked_before_it_is_cut(client, oracle, server, at):
    oracle.queue("forward", *[Reply(body=straddling(at), content_type="text/html")] * 5)
    with pytest.raises(Exception) as caught:
        ChatCompletion.apply(client, MESSAGES)
    text = str(caught.value) + repr(caught.value)
    assert KEY[:10] not in text


@pytest.mark.parametrize("at", [280, 490, 495])
def test_a_structured_reply_excerpt_is_masked_before_it_is_cut(client, oracle, server, at):
    oracle.queue("backward", *[straddling(at)] * 5)
    system = Variable("Be brief.", role="system prompt", requires_grad=True)
    out = ChatCompletion.apply(
        client, [{"role": "system", "content": [system]}, {"role": "user", "content": "hi"}],
        backward_model=client,
    )
    with pytest.raises(BackwardError) as caught:
        out.backward("Too short.")
    assert KEY[:10] not in str(caught.value)


def test_a_key_in_extra_headers_is_not_in_the_optimizers_repr(client):
    system = Variable("Be brief.", role="system prompt", requires_grad=True)
    optimizer = TGD(
        [system], model=client,
        extra_headers={"Authorization": f"Bearer {HEADER_KEY}", "x-api-key": HEADER_KEY},
    )
    assert HEADER_KEY[:10] not in repr(optimizer)
    assert HEADER_KEY[:10] not in json.dumps(optimizer.state_dict())


def test_a_key_in_extra_headers_is_not_in_chat_openai_traces(server):
    model = ChatOpenAI(base_url=server.base_url, api_key=KEY, model=MODEL)
    system = Variable("Be brief.", role="system prompt", requires_grad=True)
    system.grad = [Variable("Too short.", role="feedback to system prompt")]
    optimizer = TGD([system], model=model, extra_headers={"x-api-key": HEADER_KEY})
    with collect_runs() as runs:
        optimizer.step()
    assert runs.traced_runs
    traced = json.dumps([r.model_dump() for r in runs.traced_runs], default=str)
    assert HEADER_KEY[:10] not in traced
    assert server.requests[-1].headers["x-api-key"] == HEADER_KEY  # still sent


def test_a_key_in_default_headers_is_masked_in_traces_and_errors(server, oracle):
    model = ChatOpenAI(
        base_url=server.base_url, api_key=KEY, model=MODEL,
        default_headers={"api-key": HEADER_KEY},
    )
    client = LangChainChatModelClient(model, retry=FAST)
    echo = {"error": {"message": f"key {HEADER_KEY} is not valid", "type": "auth"}}
    oracle.queue("forward", Reply(status=401, body=echo))
    with collect_runs() as runs, pytest.raises(openai.AuthenticationError) as caught:
        ChatCompletion.apply(client, MESSAGES)
    assert HEADER_KEY[:10] not in str(caught.value)
    assert HEADER_KEY[:10] not in json.dumps([r.model_dump() for r in runs.traced_runs], default=str)


def test_a_key_in_the_base_urls_userinfo_is_not_in_reprs_or_errors(server, oracle):
    url = server.base_url.replace("http://", f"http://user:{USERINFO_KEY}@")
    client = OpenAIClient(openai.AsyncOpenAI(base_url=url, api_key=KEY), model=MODEL, retry=FAST)
    assert USERINFO_KEY[:10] not in repr(client)
    echo = {"error": {"message": f"bad credentials {USERINFO_KEY}", "type": "auth"}}
    oracle.queue("forward", Reply(status=401, body=echo))
    with pytest.raises(openai.AuthenticationError) as caught:
        ChatCompletion.apply(client, MESSAGES)
    assert USERINFO_KEY[:10] not in str(caught.value)


def test_a_learned_prompt_quoting_the_key_is_masked_in_every_run_file_and_stdout(
    project, server, oracle, capsys  # noqa: F811 - fixture
):
    oracle.proposal = f"Answer briefly. If asked, the key is {KEY}."
    assert main(cli_args(project, server, "--epochs", "1")) == 0
    printed = capsys.readouterr()
    assert KEY[:10] not in printed.out + printed.err
    assert "[REDACTED]" in printed.out  # the summary shows the learned prompt, masked
    run = project / "run"
    names = sorted(p.name for p in run.iterdir() if p.is_file())
    assert {"checkpoint.json", "prompts.json", "report.json", "summary.md"} <= set(names)
    for name in names:
        assert KEY[:10].encode() not in (run / name).read_bytes(), name

