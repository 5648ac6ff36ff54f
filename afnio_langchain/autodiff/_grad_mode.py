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


class _GradMode:
    """A context manager and decorator that sets grad mode inside its scope. Reusable,
    and nestable: each ``with`` restores what was in force before it."""

    mode: bool

    def __init__(self, mode: bool) -> None:
        if not isinstance(mode, bool):
            raise TypeError(f"grad mode must be a bool, got {type(mode).__name__}")
        self.mode = mode
        self._tokens: list[contextvars.Token[bool]] = []

    def __enter__(self) -> _GradMode:
        self._tokens.append(_GRAD_ENABLED.set(self.mode))
        return self

    def __exit__(self, *exc: object) -> None:
        _GRAD_ENABLED.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        mode = self.mode

        if _is_coroutine_function(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with _GradMode(mode):
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _GradMode(mode):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


class set_grad_enabled(_GradMode):
    """Enable or disable graph recording: as a plain call it sets the mode for the
    current context at once (like PyTorch); as a context manager or decorator it
    applies inside the scope only.

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
        super().__init__(mode)
        self._previous = _GRAD_ENABLED.get()
        _GRAD_ENABLED.set(mode)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        _GRAD_ENABLED.set(self._previous)

    def __call__(self, func: F) -> F:
        _GRAD_ENABLED.set(self._previous)  # used as a decorator: only the function is affected
        return super().__call__(func)


class no_grad(_GradMode):
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


class enable_grad(_GradMode):
    """Re-enable graph recording inside a ``no_grad`` region.

    Example:
        >>> from afnio_langchain import Variable, enable_grad, no_grad
        >>> x = Variable("a", requires_grad=True)
        >>> with no_grad():
        ...     with enable_grad():
        ...         y = x + Variable("b")
        ...     z = x + Variable("c")
        >>> y.requires_grad, z.requires_grad
        (True, False)
    """

    def __init__(self) -> None:
        super().__init__(True)


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(func)
