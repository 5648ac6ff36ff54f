"""A chain's routing function, with the chains it picks from made trainable.

LangChain's documented way to route is a function that returns the next chain to run:
``RunnableLambda(route)``, where ``route(info)`` returns one of the chains it closes over
and LangChain runs that chain on the same input. ``make_trainable`` converts those
chains too; :func:`routed` rebuilds the function so that it returns the converted chain
(or, on export, the exported one) where the original returned the original. Only
returned chains are swapped: a chain the function invokes itself runs as written, and
:class:`UntrainedRouteWarning` says so the first time a model runs inside the function.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda
from langchain_core.tracers.context import register_configure_hook

from afnio_langchain.runnables._chunks import StreamsThroughTransform, whole_input
from afnio_langchain.runnables._text_lambda import TextLambda, _as_text, _relinked


def routes_of(function: RunnableLambda, convert: Callable[[Any], Any]) -> dict[int, Runnable]:
    """``id(chain) -> convert(chain)`` for each chain ``function`` closes over that
    ``convert`` changes (LangChain's own dependency analysis finds them); empty for a
    generator function, whose output is streamed rather than run."""
    if _is_generator(function):
        return {}
    try:
        deps = function.deps
    except Exception:  # noqa: BLE001 - source inspection can fail on builtins
        return {}
    changed = {}
    for dep in deps:
        new = convert(dep)
        if new is not dep:
            changed[id(dep)] = new
    return changed


def _is_generator(function: RunnableLambda) -> bool:
    funcs = [getattr(function, "func", None), getattr(function, "afunc", None)]
    return any(
        inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f) for f in funcs if f
    )


class UntrainedRouteWarning(UserWarning):
    """A routing function ran a chat model itself (``return chain.invoke(x)``) instead of
    returning the chain: that chain runs as the original wrote it, and its prompts get no
    feedback. Return the chain, and LangChain runs it (converted) on the same input.

    Example:
        >>> import warnings
        >>> from langchain_core.prompts import PromptTemplate
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain import make_trainable
        >>> from afnio_langchain.runnables import UntrainedRouteWarning
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> maths = PromptTemplate.from_template("Solve: {q}") | ScriptedChatModel(forward="42")
        >>> def route(info):
        ...     return maths.invoke(info)  # runs the original chain: it cannot train
        >>> chain = make_trainable(RunnableLambda(route))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = chain.invoke({"q": "6 x 7?"})
        >>> [w.category.__name__ for w in caught]
        ['UntrainedRouteWarning']
    """


class _ModelInRouteBody(BaseCallbackHandler):
    """Warns, the first time, that a chat model started while a routing function's own
    body ran. Set in :data:`_WATCHING` only while the body runs: the chain it returns
    runs after the body has returned."""

    raise_error = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.warned = False

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self._warn()

    def on_llm_start(self, serialized: Any, prompts: Any, **kwargs: Any) -> None:
        self._warn()

    def _warn(self) -> None:
        if self.warned:
            return
        self.warned = True
        warnings.warn(
            f"the routing function {self.name!r} ran a chat model itself: a chain it "
            "invokes (chain.invoke(x)) runs as written and does not train. Return the "
            "chain instead, and LangChain runs its trainable version on the same input",
            UntrainedRouteWarning,
            stacklevel=2,
        )


_WATCHING: contextvars.ContextVar[_ModelInRouteBody | None] = contextvars.ContextVar(
    "afnio_route_body", default=None
)
register_configure_hook(_WATCHING, inheritable=True)  # LangChain adds it to every run inside

# Set by RoutingLambda's stream while its function runs: gets True when the function
# returned a chain (whose chunks then stream as they are), False for any other result.
_RETURNED: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "afnio_route_returned", default=None
)
_END = object()


def _note(output: Any) -> None:
    returned = _RETURNED.get()
    if returned is not None:
        returned.append(isinstance(output, Runnable))


def routed(
    function: RunnableLambda, routes: Mapping[int, Runnable], *, watch: bool = False
) -> RunnableLambda:
    """A copy of ``function`` whose returned chains are looked up in ``routes`` (by
    ``id``); its other results, its name and the arguments it takes are unchanged.
    ``watch``: warn (:class:`UntrainedRouteWarning`) when the function runs a chat
    model itself instead of returning the chain.

    Example:
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain.runnables._routing import routed
        >>> loud, quiet = RunnableLambda(str.upper), RunnableLambda(str.lower)
        >>> def route(text):
        ...     return loud if text.endswith("!") else "as is"
        >>> swapped = routed(RunnableLambda(route), {id(loud): quiet})
        >>> swapped.invoke("Hi!"), swapped.invoke("Hi"), swapped.name
        ('hi!', 'as is', 'route')
    """

    def pick(output: Any) -> Any:
        return routes.get(id(output), output) if isinstance(output, Runnable) else output

    func, afunc = getattr(function, "func", None), getattr(function, "afunc", None)
    watcher = _ModelInRouteBody(function.name) if watch else None
    new_func = new_afunc = None
    if func is not None:

        @functools.wraps(func)
        def new_func(*args: Any, **kwargs: Any) -> Any:
            token = _WATCHING.set(watcher)
            try:
                output = func(*args, **kwargs)
            finally:
                _WATCHING.reset(token)
            _note(output)
            return pick(output)

    if afunc is not None:

        @functools.wraps(afunc)
        async def new_afunc(*args: Any, **kwargs: Any) -> Any:
            token = _WATCHING.set(watcher)
            try:
                output = await afunc(*args, **kwargs)
            finally:
                _WATCHING.reset(token)
            _note(output)
            return pick(output)

    if new_func is None:
        return RunnableLambda(new_afunc, name=function.name)  # type: ignore[arg-type]
    return RunnableLambda(new_func, afunc=new_afunc, name=function.name)


class RoutingLambda(StreamsThroughTransform, TextLambda):
    """A routing function of the original chain (see the module doc): it gets text, as
    :class:`TextLambda` gives it, and the chain it returns runs converted. ``routes``
    holds the converted chains, so their prompts are among the chain's parameters.

    Example:
        >>> from langchain_core.prompts import PromptTemplate
        >>> from langchain_core.runnables import RunnableLambda
        >>> from afnio_langchain import make_trainable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="42")
        >>> maths = PromptTemplate.from_template("Solve: {question}") | model
        >>> other = PromptTemplate.from_template("Answer: {question}") | model
        >>> def route(info):
        ...     return maths if "math" in info["topic"].lower() else other
        >>> chain = make_trainable({"topic": lambda x: "Math", "question": lambda x: x["q"]}
        ...                        | RunnableLambda(route))
        >>> chain.invoke({"q": "6 x 7?"}).data, len(chain.parameters())
        ('42', 2)
        >>> model.calls[-1].messages[0].content
        'Solve: 6 x 7?'
    """

    routes: dict[int, Runnable]

    def _streamed(self, chunk: Any, returned: list[bool], source: Any) -> Any:
        # The returned chain's chunks pass as it streams them (text, then its Variable);
        # another result is linked back into the graph, as invoke does.
        return chunk if returned and returned[0] else _relinked(chunk, source, self._label())

    def transform(
        self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        """Streams as ``RunnableLambda`` does: the chunks of the (converted) chain the
        function returns, as they arrive."""
        text, source = _as_text(whole_input(list(input)))
        returned: list[bool] = []
        chunks = iter(self.bound.stream(text, config, **kwargs))
        token = _RETURNED.set(returned)  # the function runs on the first chunk
        try:
            first = next(chunks, _END)
        finally:
            _RETURNED.reset(token)
        if first is _END:
            return
        yield self._streamed(first, returned, source)
        for chunk in chunks:
            yield self._streamed(chunk, returned, source)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        text, source = _as_text(whole_input([chunk async for chunk in input]))
        returned: list[bool] = []
        chunks = aiter(self.bound.astream(text, config, **kwargs))
        token = _RETURNED.set(returned)
        try:
            first = await anext(chunks, _END)
        finally:
            _RETURNED.reset(token)
        if first is _END:
            return
        yield self._streamed(first, returned, source)
        async for chunk in chunks:
            yield self._streamed(chunk, returned, source)


__all__ = ["RoutingLambda", "UntrainedRouteWarning", "routed", "routes_of"]
