"""Against a live OpenAI-compatible provider. Opt-in: ``pytest -m live`` with
``OPENAI_API_KEY`` set (``AFNIO_LIVE_MODEL`` picks the model, default gpt-4o-mini;
``OPENAI_BASE_URL`` another provider). Skipped without a key; never required."""

from __future__ import annotations

import os

import pytest

from afnio_langchain import ChatCompletionRunnable, Variable, track_usage, use_backward_model
from afnio_langchain.optim import TGD

pytestmark = [
    pytest.mark.live,
    pytest.mark.enable_socket,  # the one test that may reach the network
    pytest.mark.skipif(not os.environ.get("OPENAI_API_KEY"), reason="needs OPENAI_API_KEY"),
]

MODEL = os.environ.get("AFNIO_LIVE_MODEL", "gpt-4o-mini")


@pytest.fixture
def chat_model():
    chat_openai = pytest.importorskip("langchain_openai").ChatOpenAI
    return chat_openai(model=MODEL, temperature=0)


def test_seed_example_forward_backward_and_one_tgd_step(chat_model):
    system = Variable("You are a helpful assistant.", role="system instruction", requires_grad=True)
    step = ChatCompletionRunnable(
        model=chat_model,
        messages=[("system", system), ("user", "Translate 'Hello' to {language}.")],
    )
    with track_usage() as usage, use_backward_model(chat_model):
        response = step.batch([{"language": "Italian"}, {"language": "Spanish"}])
        assert all(r.data.strip() for r in response)
        for r in response:
            r.backward("Use only capital letters, and reply with the translated word only.")
        assert len(system.grad) == 2 and all(g.data.strip() for g in system.grad)
        before = system.data
        TGD([system], model=chat_model).step()
    assert system.data != before
    purposes = usage.by_purpose()
    assert purposes["forward"].calls == 2 and purposes["backward"].calls == 2
    assert purposes["optimizer"].calls >= 1
    assert usage.total().input_tokens > 0
