"""``VariableRunnable``: the LangChain plumbing shared by this package's Runnables that
return a ``Variable`` (an LLM step, an agent run)."""

from __future__ import annotations

import abc
from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableSerializable

from afnio_langchain._aio import run_sync
from afnio_langchain._signed_calls import arun_method_with_config, run_method_with_config
from afnio_langchain.autodiff import Variable


class VariableRunnable(RunnableSerializable[Any, Variable], abc.ABC):
    """A Runnable whose work is one coroutine, ``_ainvoke(input, config)``, returning a
    ``Variable`` attached to the graph.

    ``invoke``/``ainvoke`` trace the run through ``_call_with_config`` /
    ``_acall_with_config`` (so it nests under the caller's run and hands child callbacks
    down), and ``batch`` runs every input concurrently on the package's event loop
    (bounded by the config's ``max_concurrency``) rather than in LangChain's small
    thread pool, so a batch takes about as long as its slowest input.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.runnables import VariableRunnable
        >>> class Shout(VariableRunnable):
        ...     async def _ainvoke(self, input, config):
        ...         return Variable(str(input).upper(), role="shout")
        >>> Shout().batch(["a", "b"])[1].data
        'B'
    """

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    @abc.abstractmethod
    async def _ainvoke(self, input: Any, config: RunnableConfig) -> Variable:
        """Run once on ``input``; ``config`` carries the run's callbacks (child run)."""

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Variable:
        return self._call_with_config(
            run_method_with_config, input, config, run_type="chain", method=self._invoke_sync
        )

    def _invoke_sync(self, input: Any, config: RunnableConfig) -> Variable:
        return run_sync(lambda: self._ainvoke(input, config))

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Variable:
        return await self._acall_with_config(
            arun_method_with_config, input, config, run_type="chain", method=self._ainvoke
        )

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Runs every input concurrently (at most ``max_concurrency`` at a time); each
        output is its own graph."""
        if not inputs:
            return []
        return run_sync(
            lambda: self.abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        )


__all__ = ["VariableRunnable"]
