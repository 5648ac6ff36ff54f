"""``Parameter``: a Variable a ``Module`` registers as one of its parameters."""

from __future__ import annotations

from afnio_langchain.autodiff import Data, Variable


class Parameter(Variable):
    """A Variable that, assigned as an attribute of a :class:`Module`, is registered
    among its parameters (``module.parameters()``), as afnio's and PyTorch's are. It
    requires grad by default. Assigning a plain Variable registers nothing (it may be
    a template or a cached value).

    Args:
        data: The value (a str or number, or a list of them).
        role: What it is ("system prompt for sentiment classification").
        requires_grad: Whether it is trained (default True).

    Example:
        >>> from afnio_langchain import cognitive as cog
        >>> p = cog.Parameter("Classify the sentiment.", role="system prompt")
        >>> p.requires_grad, p.is_leaf
        (True, True)
        >>> print(repr(p))
        Parameter containing:
          Variable(data='Classify the sentiment.', role='system prompt', requires_grad=True)
    """

    __slots__ = ()

    def __init__(self, data: Data = "", role: str | None = "", requires_grad: bool = True) -> None:
        super().__init__(data, role=role or "", requires_grad=requires_grad)

    def __deepcopy__(self, memo: dict) -> Parameter:
        if id(self) in memo:
            return memo[id(self)]
        copy = type(self)(self.items() if self.is_batched else self.data, self.role, self.requires_grad)
        memo[id(self)] = copy
        return copy

    def __repr__(self) -> str:
        return "Parameter containing:\n  " + super().__repr__()
