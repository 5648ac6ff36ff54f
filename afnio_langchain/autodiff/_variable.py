"""``Variable``: a piece of text (or a minibatch of texts) in the graph."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
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
    if type(data) is str:  # the usual data: one text
        return data
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
        items = list(data)
        # As afnio does: a list of numbers mixing ints and floats holds floats.
        if any(isinstance(x, float) for x in items) and any(
            type(x) is int for x in items
        ) and not any(isinstance(x, str) for x in items):
            items = [float(x) for x in items]
        return items
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
        "_forced_leaf",
        "_variable_id",
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
        self._forced_leaf: bool | None = None
        self._variable_id: str | None = None

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
        """True for Variables not produced by a differentiable operation.

        It can be set, as afnio's tests do to treat a Variable as a non-leaf (then
        :meth:`retain_grad` applies to it); graph recording never sets it.
        """
        if self._forced_leaf is not None:
            return self._forced_leaf
        return not self._requires_grad or self.grad_fn is None

    @is_leaf.setter
    def is_leaf(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"is_leaf must be a bool, got {type(value).__name__}")
        self._forced_leaf = value

    def retain_grad(self) -> None:
        """Keep gradients on this non-leaf Variable after backward (leaves always do)."""
        if not self._requires_grad:
            raise RuntimeError("can't retain_grad on a Variable that has requires_grad=False")
        if not self.is_leaf:
            self._retains_grad = True
            if self.grad_fn is not None:
                self.grad_fn.retained[self.output_nr] = self

    @property
    def retains_grad(self) -> bool:
        return self._retains_grad

    # afnio's spellings of the same state (its tests read them).
    @property
    def _retain_grad(self) -> bool:
        return self._retains_grad

    @property
    def _output_nr(self) -> int:
        return self.output_nr

    @property
    def _grad_fn(self) -> Node | None:
        return self.grad_fn

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

    # -- afnio's members ----------------------------------------------------------------
    @property
    def variable_id(self) -> str:
        """A unique id for this Variable, made on first use (afnio's server gives one;
        here it is local and never sent anywhere)."""
        if self._variable_id is None:
            self._variable_id = uuid.uuid4().hex
        return self._variable_id

    @property
    def shape(self) -> tuple[int, ...]:
        """``()`` for a single value, ``(n,)`` for a minibatch of ``n`` items.

        Example:
            >>> from afnio_langchain import Variable
            >>> Variable("abc").shape, Variable([1, 2, 3]).shape
            ((), (3,))
        """
        return (len(self._data),) if isinstance(self._data, list) else ()

    def copy_(self, src: Variable) -> Variable:
        """Copy ``src``'s data, role and ``requires_grad`` into this Variable, in place.

        Raises:
            TypeError: ``src`` is not a Variable.
            ValueError: The shapes differ (a single value onto a minibatch, or two
                minibatches of different sizes).

        Example:
            >>> from afnio_langchain import Variable
            >>> v = Variable("Tellurio", role="input variable", requires_grad=True)
            >>> v.copy_(Variable(123, role="copied")).data, v.role, v.requires_grad
            (123, 'copied', False)
        """
        if not isinstance(src, Variable):
            raise TypeError(f"copy_ expects a Variable, got {type(src).__name__}")
        if self.shape != src.shape:
            raise ValueError(f"cannot copy data: shape mismatch ({self.shape} vs {src.shape})")
        self.data = src.items() if src.is_batched else src.data
        self.role = src.role
        self.requires_grad_(src.requires_grad)
        return self

    def is_floating_point(self) -> bool:
        """True when the data is a float, or a non-empty list of floats."""
        if isinstance(self._data, list):
            return bool(self._data) and all(isinstance(x, float) for x in self._data)
        return isinstance(self._data, float)

    def to(self, dtype: Callable[[Any], Any] | None = None) -> Variable:
        """A new Variable (same role and ``requires_grad``) with the data cast by
        ``dtype`` (``float``, ``int``, ``str``), item by item for a minibatch.

        Example:
            >>> from afnio_langchain import Variable
            >>> Variable([1, 2], role="counts").to(float).data
            [1.0, 2.0]
        """
        if dtype is None:
            data: Data = self.items() if self.is_batched else self._data
        elif isinstance(self._data, list):
            data = [dtype(x) for x in self._data]
        else:
            data = dtype(self._data)
        return Variable(data, role=self.role, requires_grad=self._requires_grad)

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

    def __iadd__(self, other: Variable | str) -> Variable:
        """In-place ``+=``: this Variable becomes the sum (same object, as in afnio);
        when grad is recorded it becomes the output of the ``Add`` node, whose input
        is this Variable as it was before."""
        from afnio_langchain.autodiff._basic_ops import Add
        from afnio_langchain.autodiff._function import AccumulateGrad

        before = Variable(self.items() if self.is_batched else self._data, role=self.role)
        before._requires_grad = self._requires_grad
        before.grad_fn, before.output_nr = self.grad_fn, self.output_nr
        if self._requires_grad and self.grad_fn is None:
            # Gradients for the value before the addition still reach this Variable.
            if self._accumulator is None:
                self._accumulator = AccumulateGrad(self)
            before._accumulator = self._accumulator
        result = Add.apply(before, _as_variable(other))
        self._data = result._data
        self.role = result.role
        self._requires_grad = result.requires_grad
        if result.grad_fn is not None:
            self.grad_fn, self.output_nr = result.grad_fn, result.output_nr
        return self

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

    # -- in pydantic models (LangChain's Runnable schemas) --------------------------------
    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        # Text (what the JSON schema shows, what a tool call sends) becomes a Variable;
        # in JSON a Variable is its text.
        return core_schema.union_schema(
            [
                core_schema.is_instance_schema(cls),
                core_schema.no_info_after_validator_function(cls, core_schema.str_schema()),
            ],
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: value.data, when_used="json"
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: Any, handler: Any) -> dict[str, Any]:
        # A Runnable's JSON schema (a parallel's, an assign's) shows a Variable as text.
        return {"type": "string", "description": "text held in a Variable of the graph"}


def _as_variable(value: Variable | str) -> Variable:
    if isinstance(value, Variable):
        return value
    if isinstance(value, str):
        return Variable(value)
    raise TypeError(f"can only combine a Variable with a Variable or str, got {type(value).__name__}")


def make_gradient(data: Data, about: Variable) -> Variable:
    """A feedback Variable about ``about``, with the role "feedback to <its role>"."""
    return Variable(data, role=f"feedback to {about.role}" if about.role else "feedback")
