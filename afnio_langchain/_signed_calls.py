"""The functions this package's Runnables (``runnables``, ``cognitive.Module``) hand to
LangChain's ``_call_with_config`` / ``_acall_with_config``, with the method to run as a
keyword.

LangChain asks ``inspect.signature`` twice per run whether the function it runs takes
``config`` and ``run_manager``. For a bound method or a closure that is about 35 µs per
run, on every item of every stage of a pipelined minibatch; for a function that carries
its ``__signature__`` about 3. These carry theirs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig

__all__ = ["arun_method", "arun_method_with_config", "run_method", "run_method_with_config"]


def run_method(input: Any, *, method: Callable[[Any], Any]) -> Any:
    return method(input)


async def arun_method(input: Any, *, method: Callable[[Any], Any]) -> Any:
    """``method(input)``, awaited when it returns an awaitable."""
    result = method(input)
    return await result if inspect.isawaitable(result) else result


def run_method_with_config(
    input: Any, config: RunnableConfig, *, method: Callable[[Any, RunnableConfig], Any]
) -> Any:
    return method(input, config)


async def arun_method_with_config(
    input: Any, config: RunnableConfig, *, method: Callable[[Any, RunnableConfig], Any]
) -> Any:
    return await method(input, config)


for _function in (run_method, arun_method, run_method_with_config, arun_method_with_config):
    _function.__signature__ = inspect.signature(_function)  # type: ignore[attr-defined]
del _function
