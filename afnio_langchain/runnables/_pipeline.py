"""``ChatPipeline``: ``step | step`` of LLM steps, whose list inputs flow through the
stages item by item.

A ``RunnableSequence`` runs a list input stage by stage: each stage waits for the
slowest of its items, and on one core the last of a stage's 32 requests leaves 31
request-builds after the first, so the lag repeats at every stage. ``ChatPipeline``
is a ``RunnableSequence`` (same steps, traces, ``batch``, streaming and sync calls) whose
``ainvoke`` on a minibatch starts every stage at once: item ``i`` of a stage is asked
for as soon as item ``i`` of the stage before has its reply
(``autodiff/_forward_streams``). The graph, the values, the usage and the callbacks'
runs (one per stage, under the sequence's run) are those of the stage-by-stage run;
the stages' runs overlap in time, and a stage's run starts with its input Variable
still filling in.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from langchain_core.runnables import RunnableConfig, RunnableSequence
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    patch_config,
    set_config_context,
)
from langchain_core.runnables.utils import coro_with_context

from afnio_langchain.autodiff import ForwardHandoff, Variable


def is_minibatch_input(value: Any) -> bool:
    """Whether a step input holds a minibatch (a list, or a Variable holding one)."""
    if isinstance(value, Mapping):
        return any(is_minibatch_input(v) for v in value.values())
    if isinstance(value, Variable):
        return value.is_batched
    return isinstance(value, list)


class ChatPipeline(RunnableSequence):
    """LLM steps composed with ``|``; on a list input, items flow through the stages
    one by one (see the module doc). Build it with ``|``; everything else is
    ``RunnableSequence``.

    Example:
        >>> import asyncio
        >>> from afnio_langchain import ChatCompletionRunnable, Variable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward=lambda request: request.split()[-1].upper())
        >>> shout = ChatCompletionRunnable(model=model, messages=[("user", "Say {word}")])
        >>> echo = ChatCompletionRunnable(model=model, messages=[("user", "Repeat {text}")])
        >>> chain = shout | echo
        >>> type(chain).__name__
        'ChatPipeline'
        >>> asyncio.run(chain.ainvoke({"word": ["hi", "ciao"]})).data
        ['HI', 'CIAO']
    """

    def __or__(self, other: Any) -> Any:
        return pipe(self, other) or super().__or__(other)

    def get_name(self, suffix: str | None = None, *, name: str | None = None) -> str:
        # Traces name it as the sequence it is, as they did before it streamed.
        if name is None and self.name is None:
            name = "RunnableSequence"
        return super().get_name(suffix, name=name)

    async def ainvoke(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Any:
        if not is_minibatch_input(input):
            return await super().ainvoke(input, config, **kwargs)
        config = ensure_config(config)
        callback_manager = get_async_callback_manager_for_config(config)
        run_manager = await callback_manager.on_chain_start(
            None,
            input,
            name=config.get("run_name") or self.get_name(),
            run_id=config.pop("run_id", None),
        )
        try:
            output = await self._streamed(input, config, run_manager, kwargs)
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        await run_manager.on_chain_end(output)
        return output

    async def _streamed(
        self, input: Any, config: RunnableConfig, run_manager: Any, kwargs: dict[str, Any]
    ) -> Any:
        tasks: list[asyncio.Task[Any]] = []
        with contextlib.ExitStack() as contexts:
            upstream: ForwardHandoff | None = None
            for i, step in enumerate(self.steps):
                step_config = patch_config(config, callbacks=run_manager.get_child(f"seq:step:{i + 1}"))
                context = contexts.enter_context(set_config_context(step_config))
                handoff = ForwardHandoff()
                context.run(handoff.install)
                stage = _run_stage(step, input, upstream, step_config, kwargs if i == 0 else {}, handoff)
                tasks.append(coro_with_context(stage, context, create_task=True))  # type: ignore[arg-type]
                upstream = handoff
            try:
                await _until_done(tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        for task in tasks:  # the earliest stage's error is the run's error
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        return tasks[-1].result()


async def _until_done(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for every stage; once one fails, the stages after it stop (run one after
    another, they would never have started): their calls are not paid for."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        failed = [tasks.index(t) for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            for task in tasks[min(failed) + 1 :]:
                task.cancel()


async def _run_stage(
    step: Any,
    input: Any,
    upstream: ForwardHandoff | None,
    config: RunnableConfig,
    kwargs: dict[str, Any],
    handoff: ForwardHandoff,
) -> Any:
    try:
        value = input if upstream is None else await upstream.output
        output = await step.ainvoke(value, config, **kwargs)
    except BaseException as exc:
        handoff.fail(exc)
        raise
    if handoff.items is not None:
        if handoff.output.result() is not output:
            error = RuntimeError(f"{step.get_name()} returned another Variable than it handed on")
            handoff.fail(error)
            raise error
        handoff.items.mark_recorded()
    handoff.deliver(output)
    return output


def chains_item_by_item(step: Any) -> bool:
    """Whether ``step`` can be a stage of a :class:`ChatPipeline`."""
    from afnio_langchain.runnables._chat import ChatCompletionRunnable

    if isinstance(step, ChatPipeline):
        return all(chains_item_by_item(s) for s in step.steps)
    return isinstance(step, ChatCompletionRunnable) and (
        type(step)._ainvoke is ChatCompletionRunnable._ainvoke
        and type(step).ainvoke is ChatCompletionRunnable.ainvoke
    )


def pipe(first: Any, other: Any) -> ChatPipeline | None:
    """``first | other`` as a :class:`ChatPipeline` when both are LLM steps (or
    pipelines of them), else None (plain LCEL composition)."""
    if not (chains_item_by_item(first) and chains_item_by_item(other)):
        return None
    return ChatPipeline(*_steps(first), *_steps(other))


def sequence_of(steps: list[Any], name: str | None = None) -> RunnableSequence:
    """``steps`` in sequence: a :class:`ChatPipeline` when every one is an LLM step."""
    if all(chains_item_by_item(step) for step in steps):
        return ChatPipeline(*steps, name=name)
    return RunnableSequence(*steps, name=name)


def _steps(runnable: Any) -> list[Any]:
    return list(runnable.steps) if isinstance(runnable, ChatPipeline) else [runnable]


__all__ = ["ChatPipeline", "chains_item_by_item", "is_minibatch_input", "pipe", "sequence_of"]
