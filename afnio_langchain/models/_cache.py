"""No paid call repeated: forward calls answered from an LLM cache when one is set.

LangChain chat models honour LangChain's LLM cache themselves
(``langchain_core.globals.set_llm_cache(InMemoryCache())``, or a model's own
``cache=``), and DSPy LMs their ``cache`` setting; their adapters only report the hits.
Every other client (the ``openai`` adapter, the local model, any
:class:`~afnio_langchain.models.BaseModelClient`) gets the same behaviour here, on the
same store: with a cache set, a forward call whose messages, JSON schema, completion
arguments, client and model are those of an earlier call is answered from the cache,
without a model call (so a rolled-back step's re-validation of unchanged prompts costs
nothing). The client's ``cache`` attribute follows LangChain's convention: ``None``
(the default) uses the global cache when one is set, ``False`` never caches, a
``BaseCache`` is used instead of the global one.

Only forward calls are cached, on every path: a critique or a proposal replayed from a
cache would silently stop the optimisation from moving.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.caches import BaseCache
from langchain_core.globals import get_llm_cache
from langchain_core.outputs import Generation

if TYPE_CHECKING:
    from afnio_langchain.models._protocol import Completion, JsonSchema, Message

CACHED_PURPOSES = frozenset({"forward"})
"""The purposes whose replies may come from an LLM cache."""

_NOT_IN_KEY = ("purpose", "config")  # run metadata, not what the model is asked


def resolve_cache(setting: BaseCache | bool | None) -> BaseCache | None:
    """The cache a client with ``cache=setting`` uses now (LangChain's convention).

    Raises:
        ValueError: ``setting`` is True but no global cache is set.

    Example:
        >>> from langchain_core.caches import InMemoryCache
        >>> from afnio_langchain.models._cache import resolve_cache
        >>> resolve_cache(None) is None, resolve_cache(False) is None  # no global cache
        (True, True)
        >>> isinstance(resolve_cache(InMemoryCache()), InMemoryCache)
        True
    """
    if setting is False:
        return None
    if setting is None:  # the usual setting: the global cache, if any
        return get_llm_cache()
    if isinstance(setting, BaseCache):
        return setting
    cache = get_llm_cache()
    if setting is True and cache is None:
        raise ValueError("cache=True, but no LLM cache is set: call set_llm_cache(...)")
    return cache


def cache_key(
    identity: str,
    messages: Sequence[Message],
    json_schema: JsonSchema | None,
    params: dict[str, Any],
) -> tuple[str, str]:
    """``(prompt, llm_string)`` for LangChain's cache interface: the messages, and
    everything else that shapes the reply (client, model, schema, arguments)."""
    prompt = json.dumps(list(messages), ensure_ascii=False, separators=(",", ":"))
    settings = {
        "client": identity,
        "json_schema": None if json_schema is None else [json_schema.name, json_schema.schema],
        "params": {k: v for k, v in params.items() if k not in _NOT_IN_KEY},
    }
    llm_string = json.dumps(settings, sort_keys=True, default=repr, separators=(",", ":"))
    return prompt, llm_string


async def cached_completion(
    cache: BaseCache, key: tuple[str, str], model: str
) -> Completion | None:
    """The cached reply for ``key`` (no tokens: nothing was spent), or None."""
    from afnio_langchain.models._protocol import Completion

    generations = await cache.alookup(*key)
    if not generations:
        return None
    info = generations[0].generation_info or {}
    return Completion(
        text=generations[0].text,
        model=str(info.get("model") or model),
        from_cache=True,
        finish_reason=info.get("finish_reason"),
        unanswered=info.get("unanswered"),
    )


async def store_completion(cache: BaseCache, key: tuple[str, str], completion: Completion) -> None:
    """Keep ``completion`` for later identical calls."""
    info = {
        "model": completion.model,
        "input_tokens": completion.input_tokens,
        "output_tokens": completion.output_tokens,
        "finish_reason": completion.finish_reason,
    }
    if completion.unanswered is not None:
        info["unanswered"] = completion.unanswered
    await cache.aupdate(*key, [Generation(text=completion.text, generation_info=info)])
