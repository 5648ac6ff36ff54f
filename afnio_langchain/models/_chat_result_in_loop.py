"""langchain-openai's async chat-completions call, with its reply turned into a
``ChatResult`` on the event loop instead of in a worker thread.

``BaseChatOpenAI._agenerate`` sends the request, then hands the reply to
``_create_chat_result`` through langchain-core's ``run_in_executor``: a hop to a
thread of the loop's default executor and back (a queue put, a thread wake-up, a
self-pipe write) for some 40 µs of pure-Python work that, under the GIL, runs no
sooner there. In a minibatch the hop is latency on the critical path: about 2% of a
3-stage step's wall time through ``ChatOpenAI`` (``benchmarks/``). langchain-openai's
sync ``_generate`` builds the result in place; :func:`agenerate_in_loop` does the same
for the two branches of the async call the package's runner copies take (chat
completions, plain and with a ``response_format``), with langchain-openai's own
payload, client calls, error mapping, header and gateway metadata, and result building.

Everything else goes to the model's own ``_agenerate``: the Responses API, a class
that overrides ``_agenerate``, and a langchain-openai without the helpers used here.
``tests/unit_tests/reliability/test_chat_result_in_loop.py`` compares the two paths on
the same replies and errors, so a langchain-openai whose ``_agenerate`` changes shows
up as a failing test.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import openai
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

__all__ = ["agenerate_in_loop", "generation_info_of", "runs_base_agenerate", "send_chat_request"]

_HELPERS = ("_handle_openai_bad_request", "_handle_openai_api_error", "_add_gateway_metadata")
_METHODS = ("_get_request_payload", "_use_responses_api", "_create_chat_result")


@functools.cache
def _langchain_openai_base() -> ModuleType | None:
    """langchain-openai's chat-model module, when it has every helper used here."""
    try:
        from langchain_openai.chat_models import base
    except ImportError:  # pragma: no cover - a core dependency of this package
        return None
    if not all(callable(getattr(base, name, None)) for name in _HELPERS):
        return None
    return base


@functools.lru_cache(maxsize=64)
def runs_base_agenerate(cls: type) -> bool:
    """Whether models of ``cls`` send chat completions with langchain-openai's own
    ``_agenerate``, with every helper :func:`agenerate_in_loop` uses."""
    base = _langchain_openai_base()
    if base is None or getattr(cls, "_agenerate", None) is not base.BaseChatOpenAI._agenerate:
        return False
    return all(callable(getattr(cls, name, None)) for name in _METHODS)


async def agenerate_in_loop(
    model: Any, messages: list[BaseMessage], stop: list[str] | None, params: dict[str, Any]
) -> ChatResult:
    """What ``await model._agenerate(messages, stop=stop, **params)`` returns (or
    raises), with the result built on the running loop (see the module doc)."""
    if not runs_base_agenerate(type(model)):
        return await model._agenerate(messages, stop=stop, **params)
    payload = model._get_request_payload(messages, stop=stop, **params)
    if "response_format" not in payload and model._use_responses_api(payload):
        return await model._agenerate(messages, stop=stop, **params)
    raw_response, response = await send_chat_request(model, payload)
    return model._create_chat_result(response, generation_info_of(model, raw_response))


async def send_chat_request(model: Any, payload: dict[str, Any]) -> tuple[Any, Any]:
    """The raw response (``with_raw_response``'s) to a chat-completions ``payload`` of a
    model whose class :func:`runs_base_agenerate`, and the reply read from it, sent and
    read as its ``_agenerate`` does, with the errors mapped as it maps them."""
    base = _langchain_openai_base()
    structured = "response_format" in payload
    raw_response = None
    try:
        if structured:
            payload.pop("stream", None)
            completions = model.root_async_client.chat.completions
            raw_response = await completions.with_raw_response.parse(**payload)
        else:
            raw_response = await model.async_client.with_raw_response.create(**payload)
        response = raw_response.parse()
    except openai.BadRequestError as exc:
        base._handle_openai_bad_request(exc)
        raise  # the handler always raises; kept for a version where it would not
    except openai.APIError as exc:
        base._handle_openai_api_error(exc)
        raise
    except Exception as exc:
        if raw_response is not None and hasattr(raw_response, "http_response"):
            exc.response = raw_response.http_response  # type: ignore[attr-defined]
        raise
    return raw_response, response


def generation_info_of(model: Any, raw_response: Any) -> dict[str, Any]:
    """The generation info ``_agenerate`` gives its result: the response headers when
    the model asks for them, and a gateway's metadata."""
    generation_info: dict[str, Any] = {}
    if model.include_response_headers and hasattr(raw_response, "headers"):
        generation_info = {"headers": dict(raw_response.headers)}
    _langchain_openai_base()._add_gateway_metadata(generation_info, raw_response)
    return generation_info
