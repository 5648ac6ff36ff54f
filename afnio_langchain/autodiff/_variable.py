"""``Variable``: a piece of text (or a minibatch of texts) in the graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

from afnio_langchain._aio import run_sync

if TYPE_CHECKING:
    from afnio_langchain.autodiff._engine import BackwardReport
    from afnio_langchain.autodiff._function import Node

Scalar = Union[str, int, float]
Data = Union[Scalar, list[Scalar]]
_SCALARS = (str, int, float)


def validate_data(data: Any) -> Data:
    """Check that ``data`` is a str/number or a list of them; return it (lists copied)."""
    if isinstance(data, bool) or not isinstance(data, (*_SCALARS, list, tuple)):
        raise TypeError(
            "Variable data must be a str (or number) or a list of them, "
            f"got {type(data).__name__}"
        )
    if isinstance(data, (list, tuple)):
        for i, item in enumerate(data):
            if isinstance(item, bool) or not isinstance(item, _SCALARS):
                raise TypeError(
                    f"Variable data list items must be str or numbers; item {i} is "
                    f"{type(item).__name__}"
                )
        return list(data)
    return data


class Variable:
    """Text in the graph: a prompt, an input, a model reply, or feedback on one.

    Args:
        data: A string (or number), or a list of them for a minibatch.
        role: What the text is ("system instruction", "answer"); gradients and
            optimizer prompts use it to say what feedback is about.
        requires_grad: Whether backward passes should compute feedback for it.

    Example:
        >>> from afnio_langchain import Variable
        >>> prompt = Variable("You are terse.", role="system instruction", requires_grad=True)
        >>> prompt.is_leaf, prompt.grad
        (True, [])
        >>> (prompt + " Answer in French.").data
        'You are terse. Answer in French.'
    """

    __slots__ = (
        "_data",
        "role",
        "_requires_grad",
        "_grad",
        "grad_fn",
        "output_nr",
        "_retains_grad",
        "_accumulator",
        "is_evaluation",
        "__weakref__",
    )

    def __init__(self, data: Data = "", role: str = "", requires_grad: bool = False) -> None:
        if not isinstance(role, str):
            raise TypeError(f"role must be a str, got {type(role).__name__}")
        if not isinstance(requires_grad, bool):
            raise TypeError(f"requires_grad must be a bool, got {type(requires_grad).__name__}")
        self._data = validate_data(data)
        self.role = role
        self._requires_grad = requires_grad
        self._grad: list[Variable] = []
        self.grad_fn: Node | None = None
        self.output_nr = 0
        self._retains_grad = False
        self._accumulator: Node | None = None
        self.is_evaluation = False

    # -- data -------------------------------------------------------------------------
    @property
    def data(self) -> Data:
        return self._data

    @data.setter
    def data(self, value: Data) -> None:
        self._data = validate_data(value)

    @property
    def is_batched(self) -> bool:
        """True when ``data`` is a list (a minibatch)."""
        return isinstance(self._data, list)

    def items(self) -> list[Scalar]:
        """The minibatch items (a one-item list for scalar data)."""
        return list(self._data) if isinstance(self._data, list) else [self._data]

    # -- autograd flags ---------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        self.requires_grad_(value)

    def requires_grad_(self, requires_grad: bool = True) -> Variable:
        """Set ``requires_grad`` in place (leaves only) and return self."""
        if not isinstance(requires_grad, bool):
            raise TypeError(f"requires_grad must be a bool, got {type(requires_grad).__name__}")
        if self.grad_fn is not None and not requires_grad:
            raise RuntimeError(
                "you can only change requires_grad flags of leaf variables; "
                "use .detach() to get a copy outside the graph"
            )
        self._requires_grad = requires_grad
        return self

    @property
    def is_leaf(self) -> bool:
        """True for Variables not produced by a differentiable operation."""
        return not self._requires_grad or self.grad_fn is None

    def retain_grad(self) -> None:
        """Keep gradients on this non-leaf Variable after backward (leaves always do)."""
        if not self._requires_grad:
            raise RuntimeError("can't retain_grad on a Variable that has requires_grad=False")
        if not self.is_leaf and self.grad_fn is not None:
            self._retains_grad = True
            self.grad_fn.retained[self.output_nr] = self

    @property
    def retains_grad(self) -> bool:
        return self._retains_grad

    @property
    def grad(self) -> list[Variable]:
        """Feedback received by backward passes, one entry per contribution (never merged)."""
        if not self.is_leaf and not self._retains_grad:
            raise RuntimeError(
                "the .grad of a non-leaf Variable is not kept; call .retain_grad() on it "
                "before backward, or read the grad of the leaf Variables instead"
            )
        return self._grad

    @grad.setter
    def grad(self, value: Sequence[Variable] | None) -> None:
        value = [] if value is None else list(value)
        for g in value:
            if not isinstance(g, Variable):
                raise TypeError(f"grad entries must be Variables, got {type(g).__name__}")
        self._grad = value

    def append_grad(self, gradient: Variable) -> None:
        """Add one feedback contribution (used by the engine)."""
        self._grad.append(gradient)

    def detach(self) -> Variable:
        """A new leaf with the same data and role, outside the graph."""
        return Variable(self.items() if self.is_batched else self._data, role=self.role)

    # -- backward ---------------------------------------------------------------------
    def backward(
        self,
        gradient: Variable | str | Sequence[str] | None = None,
        retain_graph: bool = False,
        *,
        max_concurrency: int | None = None,
        best_effort: bool = False,
    ) -> BackwardReport | None:
        """Send ``gradient`` (feedback text) back through the graph to every leaf that
        requires grad. Works inside a running event loop too.

        Args:
            gradient: Feedback on this Variable: a Variable, a str, or for a minibatch a
                list of str (a single str is given to every item). Outputs of
                evaluators need none: their explanation is the feedback.
            retain_graph: Keep the graph for another backward pass.
            max_concurrency: Cap on model calls in flight during this pass.
            best_effort: By default a pass is all or nothing: any failure raises
                ``BackwardError`` and commits no gradient. With True, failed nodes and
                minibatch items drop out, the other gradients are committed, and a
                ``BackwardReport`` naming what failed is returned.

        Returns:
            None, or with ``best_effort=True`` the pass's ``BackwardReport``.
        """
        return run_sync(
            lambda: self.abackward(
                gradient, retain_graph, max_concurrency=max_concurrency, best_effort=best_effort
            )
        )

    async def abackward(
        self,
        gradient: Variable | str | Sequence[str] | None = None,
        retain_graph: bool = False,
        *,
        max_concurrency: int | None = None,
        best_effort: bool = False,
    ) -> BackwardReport | None:
        """Async :meth:`backward`."""
        from afnio_langchain.autodiff._engine import run_backward

        return await run_backward(
            [(self, gradient)],
            retain_graph=retain_graph,
            max_concurrency=max_concurrency,
            best_effort=best_effort,
        )

    # -- operators --------------------------------------------------------------------
    def __add__(self, other: Variable | str) -> Variable:
        from afnio_langchain.autodiff._basic_ops import Add

        return Add.apply(self, _as_variable(other))

    def __deepcopy__(self, memo: dict) -> Variable:
        # Tracers and config copies deep-copy run inputs: copy the text, never the graph.
        copy = self.detach()
        copy._requires_grad = self._requires_grad and self.is_leaf
        memo[id(self)] = copy
        return copy

    def __repr__(self) -> str:
        extra = ""
        if self.grad_fn is not None:
            extra = f", grad_fn=<{self.grad_fn.name()}>"
        elif self._requires_grad:
            extra = ", requires_grad=True"
        return f"Variable(data={self._data!r:.200}, role={self.role!r}{extra})"

    def __str__(self) -> str:
        return str(self._data)


def _as_variable(value: Variable | str) -> Variable:
    if isinstance(value, Variable):
        return value
    if isinstance(value, str):
        return Variable(value)
    raise TypeError(f"can only combine a Variable with a Variable or str, got {type(value).__name__}")


def make_gradient(data: Data, about: Variable) -> Variable:
    """A feedback Variable about ``about``, with the role "feedback to <its role>"."""
    return Variable(data, role=f"feedback to {about.role}" if about.role else "feedback")
