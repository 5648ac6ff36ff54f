"""Optimizer failures say where: the step and the parameter, and what came back; the
original error stays the cause and nothing is written."""

from __future__ import annotations

import openai
import pytest

from afnio_langchain import Variable
from afnio_langchain.optim import TGD

from ._stdlib_server import Reply


def test_a_failed_step_names_the_step_and_the_parameter(client, oracle, server):
    from afnio_langchain.optim import OptimizerStepError

    first = Variable("Be brief.", role="system prompt", requires_grad=True)
    second = Variable("Use examples.", role="few-shot examples", requires_grad=True)
    optimizer = TGD([first, second], model=client)
    for step in (1, 2):
        for p in (first, second):
            p.grad = [Variable("Too short.", role=f"feedback to {p.role}")]
        if step == 2:
            denied = {"error": {"message": "insufficient quota", "type": "insufficient_quota"}}
            oracle.queue("optimizer", Reply(status=403, body=denied))
        before = [first.data, second.data]
        if step == 1:
            optimizer.step()
            continue
        with pytest.raises(OptimizerStepError) as caught:
            optimizer.step()
        assert [first.data, second.data] == before  # nothing written
    error = caught.value
    text = str(error)
    assert "step 2" in text and "insufficient quota" in text
    assert "parameter 0 ('system prompt')" in text or "parameter 1 ('few-shot examples')" in text
    assert isinstance(error.__cause__, openai.PermissionDeniedError)
    assert error.step == 2 and error.index in (0, 1)
