"""Wall time of one minibatch of 8 ``ChatCompletion`` items at 0.3 s per model call.

Forward makes 8 concurrent calls and backward 8 concurrent calls (one per item), so
each should take about one call's latency, not eight. Measured two ways: a scripted
fake chat model that sleeps, and the real ``openai`` client against the loopback
HTTP server with injected latency.

    python benchmarks/minibatch_latency.py [--items 8] [--latency 0.3]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import openai

from afnio_langchain import Variable, set_backward_model
from afnio_langchain.autodiff import ChatCompletion
from afnio_langchain.testing import OpenAICompatServer, ScriptedChatModel


def one_minibatch(client: Any, items: int, **model_args: Any) -> tuple[float, float]:
    system = Variable("You are a helpful assistant.", role="system instruction", requires_grad=True)
    messages = [
        {"role": "system", "content": [system]},
        {"role": "user", "content": ["Say {word}."]},
    ]
    inputs = {"word": [f"word {i}" for i in range(items)]}
    began = time.perf_counter()
    response = ChatCompletion.apply(client, messages, inputs=inputs, **model_args)
    forward = time.perf_counter() - began
    began = time.perf_counter()
    response.backward("Be more concise.")
    backward = time.perf_counter() - began
    assert len(system.grad) == items
    return forward, backward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.3)
    args = parser.parse_args()
    results: dict[str, Any] = {"items": args.items, "latency_s": args.latency}

    fake = ScriptedChatModel(forward="ok", feedback="shorter", latency=args.latency)
    set_backward_model(fake)
    results["scripted"] = one_minibatch(fake, args.items)

    with OpenAICompatServer(latency=args.latency) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-bench")
        set_backward_model(client, model_name="fake-model")
        one_minibatch(client, 1, model="fake-model")  # warm the connection pool
        results["openai_http"] = one_minibatch(client, args.items, model="fake-model")
    set_backward_model(None)

    serial = args.items * args.latency
    print(f"{'model':<14}{'forward s':>11}{'backward s':>12}{'serial s':>10}")
    for name in ("scripted", "openai_http"):
        forward, backward = results[name]
        print(f"{name:<14}{forward:>11.3f}{backward:>12.3f}{serial:>10.2f}")
    print(
        json.dumps(
            {
                name: {
                    "forward_s": round(results[name][0], 3),
                    "backward_s": round(results[name][1], 3),
                }
                for name in ("scripted", "openai_http")
            }
            | {"items": args.items, "latency_s": args.latency}
        )
    )


if __name__ == "__main__":
    main()
