"""A langchain-openai model's call without langchain-core's run around it, when nothing
would observe that run.

``BaseChatModel.ainvoke`` wraps the model's own ``_agenerate`` in a run: a callback
manager configured from the call's config, the model and the environment (tracers),
start and end events, the LLM cache, the rate limiter and the streaming decision. On
one core that wrapping costs about as much CPU per call as the request itself, and in a
minibatch that CPU sits on the critical path (``benchmarks/``). When the call would get
no callback handler at all (no callbacks in its config or on the model, no tracer from
``LANGSMITH_TRACING`` or a tracing context, no ``verbose``/``set_debug``), no cache
applies, there is no rate limiter, the model would not stream and does not rewrite its
output to v1 content blocks, the run does nothing anyone sees: the call then goes to the
model's own ``_agenerate`` (its request, its reply parsing, its errors; its reply
turned into a result on the loop, see ``_chat_result_in_loop``), and the reply's
metadata is merged as the run merges it. The one difference left is the id LangChain
gives the reply message (``lc_run-...``), which only a handler could match to a run.

:func:`complete_unobserved` goes one step further for a conversation of plain text
messages: its payload is langchain-openai's without the messages' round trip through
LangChain objects (``_plain_chat_payload``), and the reply's text, counts and finish
reason are read from the reply body; the message the run would give back (the
completion's ``raw``) is built from the same body the first time it is read.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, chat_models
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult
from langchain_core.runnables import RunnableConfig

from afnio_langchain._aio import started_together
from afnio_langchain.models._chat_body import completion_from
from afnio_langchain.models._chat_result_in_loop import (
    agenerate_in_loop,
    generation_info_of,
    runs_base_agenerate,
    send_chat_request,
)
from afnio_langchain.models._plain_chat_payload import plain_payload
from afnio_langchain.models._protocol import Completion, DeferredRawCompletion, Message

__all__ = [
    "agenerate_unobserved",
    "complete_unobserved",
    "is_unobserved",
    "is_unobserved_in_batch",
    "no_cache_applies",
]

# What ainvoke runs around _agenerate; a model class that overrides any of it keeps it.
_RUN_METHODS = ("ainvoke", "agenerate_prompt", "agenerate", "_agenerate_with_cache")
# Generation info the run leaves out of response_metadata (langchain-core 1.x).
_GATEWAY_KEY = getattr(chat_models, "GATEWAY_METADATA_RESPONSE_KEY", None)


@functools.lru_cache(maxsize=64)
def _keeps_base_run(cls: type) -> bool:
    return all(getattr(cls, name) is getattr(BaseChatModel, name) for name in _RUN_METHODS)


def no_cache_applies(model: BaseChatModel) -> bool:
    """Whether LangChain's LLM cache plays no part in ``model``'s calls (``cache=False``,
    or no cache of its own and no global one)."""
    return model.cache is False or (model.cache is None and get_llm_cache() is None)


def is_unobserved(model: BaseChatModel, config: RunnableConfig, params: dict[str, Any]) -> bool:
    """Whether ``model.ainvoke(..., config=config, **params)`` would run with no callback
    handler, cache, rate limiter, stream or v1 output rewrite (see the module doc).

    The handlers are counted by LangChain's own ``AsyncCallbackManager.configure``, with
    the callbacks and verbosity ``agenerate`` gives it, so every source of a tracer it
    knows of counts. Tags and metadata are left out: they add no handler, and merging
    them is a third of ``configure``'s time.
    """
    if not _keeps_base_run(type(model)):
        return False
    if model.rate_limiter is not None or getattr(model, "output_version", None) == "v1":
        return False
    if not no_cache_applies(model) or model._should_stream(async_api=True, **params):
        return False
    manager = AsyncCallbackManager.configure(config.get("callbacks"), model.callbacks, model.verbose)
    return not manager.handlers


def is_unobserved_in_batch(
    model: BaseChatModel,
    runner: BaseChatModel,
    config: RunnableConfig,
    params: dict[str, Any],
    purpose: str,
) -> bool:
    """:func:`is_unobserved` for ``runner`` (the copy of ``model`` a call runs on),
    worked out once for the calls of one minibatch (the tasks of one
    :func:`~afnio_langchain._aio.start_each`) with the same model, config callbacks,
    purpose and parameter names: LangChain's own batch call (``agenerate`` of several
    prompts) configures its callbacks once for all of them too."""
    batch = started_together()
    if batch is None:
        return is_unobserved(runner, config, params)
    callbacks = config.get("callbacks")
    key = ("is_unobserved", id(model), id(callbacks), purpose, tuple(params))
    seen = batch.get(key)
    if seen is None:  # the objects are kept so that their ids stay theirs
        seen = batch[key] = (model, callbacks, is_unobserved(runner, config, params))
    return seen[2]


async def agenerate_unobserved(
    model: BaseChatModel, messages: list[BaseMessage], params: dict[str, Any]
) -> BaseMessage:
    """The reply ``model.ainvoke(messages, **params)`` gives, from the model's own
    ``_agenerate``, with the response metadata merged as ``_agenerate_with_cache`` does.

    Call only where :func:`is_unobserved` holds."""
    stop, params = _model_call_params(params)
    return _reply_message(await agenerate_in_loop(model, messages, stop, params))


async def complete_unobserved(
    model: BaseChatModel,
    messages: Sequence[Message],
    params: dict[str, Any],
    to_completion: Callable[[BaseMessage], Completion],
    default_model: str,
) -> Completion | None:
    """The reply to plain text ``messages`` (``model.ainvoke``'s, read as
    ``to_completion`` reads a reply message), read from the reply body; its ``raw``, the
    message, built when first read. None, before anything is sent, where the
    conversation or the model is not one :func:`agenerate_unobserved` would send as
    plain chat completions (the caller then does).

    Call only where :func:`is_unobserved` holds."""
    if not runs_base_agenerate(type(model)):
        return None
    stop, params = _model_call_params(params)
    payload = plain_payload(model, messages, stop, params)  # None for the Responses API
    if payload is None:
        return None
    raw_response, body = await send_chat_request(model, payload)
    generation_info = generation_info_of(model, raw_response)

    def reply() -> BaseMessage:
        return _reply_message(model._create_chat_result(body, generation_info))

    if not _reads_as_plain(body):  # where langchain-openai raises, or reads it otherwise
        return to_completion(reply())
    return DeferredRawCompletion.of(completion_from(body, default_model), reply)


_RUN_ONLY_PARAMS = ("ls_structured_output_format", "structured_output_format")
"""Call keywords the run takes for its tracing metadata and never passes to the model's
``_agenerate`` (``with_structured_output`` binds one): sent on, they would reach the
provider as unknown request fields."""


def _model_call_params(params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``(stop, keywords)`` as ``agenerate`` hands them to ``_agenerate``."""
    params = {k: v for k, v in params.items() if k not in _RUN_ONLY_PARAMS}
    return params.pop("stop", None), params


def _reads_as_plain(body: Any) -> bool:
    """Whether langchain-openai reads ``body`` (checked by ``_chat_body``) as an
    assistant message whose text, usage and finish reason are the body's own."""
    if type(body) is not dict or body.get("error"):
        return False
    message = body["choices"][0]["message"]
    return message.get("role") == "assistant"


def _reply_message(result: ChatResult) -> BaseMessage:
    generation = result.generations[0]
    message = generation.message
    info = {k: v for k, v in (generation.generation_info or {}).items() if k != _GATEWAY_KEY}
    message.response_metadata = {**info, **message.response_metadata}
    if len(result.generations) == 1 and result.llm_output is not None:
        message.response_metadata = {**result.llm_output, **message.response_metadata}
    return message
