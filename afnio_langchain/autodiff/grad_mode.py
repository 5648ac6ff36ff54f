"""Grad mode: whether operations record the graph. A contextvar, so it follows
asyncio tasks and LangChain's thread pools (which copy contextvars)."""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_GRAD_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "afnio_grad_enabled", default=True
)


def is_grad_enabled() -> bool:
    """Whether operations in the current context record the graph."""
    return _GRAD_ENABLED.get()


class set_grad_enabled:
    """Enable or disable graph recording: a plain call, a context manager or a decorator.

    Example:
        >>> from afnio_langchain import set_grad_enabled, is_grad_enabled
        >>> with set_grad_enabled(False):
        ...     is_grad_enabled()
        False
        >>> is_grad_enabled()
        True
    """

    def __init__(self, mode: bool) -> None:
        if not isinstance(mode, bool):
            raise TypeError(f"set_grad_enabled expects a bool, got {type(mode).__name__}")
        self.mode = mode
        self._tokens: list[contextvars.Token[bool]] = []
        self._plain_call_token = _GRAD_ENABLED.set(mode)

    def __enter__(self) -> set_grad_enabled:
        return self

    def __exit__(self, *exc: object) -> None:
        _GRAD_ENABLED.reset(self._plain_call_token)

    def __call__(self, func: F) -> F:
        _GRAD_ENABLED.reset(self._plain_call_token)
        mode = self.mode

        if _is_coroutine_function(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = _GRAD_ENABLED.set(mode)
                try:
                    return await func(*args, **kwargs)
                finally:
                    _GRAD_ENABLED.reset(token)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = _GRAD_ENABLED.set(mode)
            try:
                return func(*args, **kwargs)
            finally:
                _GRAD_ENABLED.reset(token)

        return wrapper  # type: ignore[return-value]


class no_grad(set_grad_enabled):
    """Disable graph recording inside a ``with`` block or a decorated function.

    Example:
        >>> from afnio_langchain import Variable, no_grad
        >>> x = Variable("a", requires_grad=True)
        >>> with no_grad():
        ...     y = x + Variable("b")
        >>> y.requires_grad
        False
    """

    def __init__(self) -> None:
        super().__init__(False)


class enable_grad(set_grad_enabled):
    """Re-enable graph recording inside a ``no_grad`` region."""

    def __init__(self) -> None:
        super().__init__(True)


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(func)
