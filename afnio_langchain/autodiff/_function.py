"""``Function`` (the op author's API) and the graph nodes ``Function.apply`` records.

An op is one subclass with ``forward(ctx, ...)`` and ``backward(ctx, grad_output)``
(or their ``async`` twins ``aforward``/``abackward``). All graph bookkeeping lives
here, in ``apply``; none in the ops.

Inputs of an op are the Variables found in its arguments, in order (positional
arguments, then keyword arguments, looking inside lists, tuples and dict values).
``ctx.needs_input_grad`` has one flag per such Variable, and ``backward`` returns one
entry per such Variable: ``None``, a gradient ``Variable``, or a list of gradient
Variables (several contributions, each appended to the input's ``grad``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any

from afnio_langchain._aio import run_in_thread, run_sync
from afnio_langchain.autodiff._grad_mode import _GRAD_ENABLED
from afnio_langchain.autodiff._variable import Variable

GradientResult = Variable | list[Variable] | None


def iter_variables(value: Any) -> Iterator[Variable]:
    """Variables inside ``value`` in order, looking into lists, tuples and dict values."""
    if isinstance(value, Variable):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_variables(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from iter_variables(item)


class FunctionCtx:
    """What ``forward`` leaves for ``backward``.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import Function
        >>> class Join(Function):
        ...     @staticmethod
        ...     def forward(ctx, a, b):
        ...         ctx.save_for_backward(a)
        ...         return Variable(f"{a.data} {b.data}", role="greeting")
        ...     @staticmethod
        ...     def backward(ctx, grad_output):
        ...         (a,) = ctx.saved_variables
        ...         return Variable(f"{grad_output.data} (about {a.data!r})"), None
        >>> first = Variable("Hi", role="salutation", requires_grad=True)
        >>> out = Join.apply(first, Variable("there"))
        >>> out.grad_fn.ctx.needs_input_grad
        (True, False)
        >>> out.backward("Too informal.")
        >>> first.grad[0].data
        "Too informal. (about 'Hi')"
    """

    def __init__(self) -> None:
        self.needs_input_grad: tuple[bool, ...] = ()
        self._saved: tuple[Variable, ...] = ()
        self._freed = False

    def save_for_backward(self, *variables: Variable | None) -> None:
        """Keep Variables for ``backward`` (freed after backward unless ``retain_graph``)."""
        for v in variables:
            if v is not None and not isinstance(v, Variable):
                raise TypeError(f"save_for_backward takes Variables, got {type(v).__name__}")
        self._saved = variables

    @property
    def saved_variables(self) -> tuple[Variable, ...]:
        self.check_not_freed()
        return self._saved

    def check_not_freed(self) -> None:
        """Raise if backward already ran through this node without ``retain_graph``."""
        if self._freed:
            raise RuntimeError(
                "Trying to backward through the graph a second time (or to read saved "
                "variables after they were freed). Specify retain_graph=True on the first "
                "backward call to keep them."
            )

    def _free(self) -> None:
        self._saved = ()
        self._freed = True


class Node:
    """A node of the backward graph: ``<Op>Backward0``.

    ``next_functions`` holds one ``(node, output_nr)`` edge per Variable input, with
    ``node`` None where that input needs no gradient.

    Example:
        >>> from afnio_langchain import Variable
        >>> x = Variable("Hello", role="greeting", requires_grad=True)
        >>> y = x + Variable(" world")
        >>> y.grad_fn, y.grad_fn.next_functions
        (<AddBackward0>, ((<AccumulateGrad>, 0), (None, 0)))
        >>> y.backward("Add a comma.")
        >>> y.grad_fn.freed  # its saved state was released (retain_graph=False)
        True
    """

    def __init__(
        self,
        function: type[Function],
        ctx: FunctionCtx,
        next_functions: tuple[tuple[Node | None, int], ...],
        num_outputs: int,
    ) -> None:
        self.function = function
        self.ctx = ctx
        self.next_functions = next_functions
        self.num_outputs = num_outputs
        self.retained: dict[int, Variable] = {}

    def name(self) -> str:
        return f"{self.function.__name__}Backward0"

    @property
    def freed(self) -> bool:
        return self.ctx._freed

    def release(self) -> None:
        self.ctx._free()

    async def run(self, grad_outputs: tuple[Variable | None, ...]) -> list[GradientResult]:
        """Run the op's backward and return one gradient entry per input edge."""
        self.ctx.check_not_freed()
        abackward = getattr(self.function, "abackward", None)
        if abackward is not None:
            result = await abackward(self.ctx, *grad_outputs)
        else:
            result = await run_in_thread(self.function.backward, self.ctx, *grad_outputs)
        if isinstance(result, tuple) or (
            isinstance(result, list) and len(self.next_functions) != 1
        ):
            results = list(result)
        else:  # one input: a gradient, or a list of several contributions to it
            results = [result]
        if len(results) != len(self.next_functions):
            raise RuntimeError(
                f"{self.name()} returned {len(results)} gradients, expected "
                f"{len(self.next_functions)} (one per Variable input)"
            )
        for i, r in enumerate(results):
            for g in r if isinstance(r, list) else [r]:
                if g is not None and not isinstance(g, Variable):
                    raise TypeError(
                        f"{self.name()} gradient {i} must be a Variable, a list of Variables "
                        f"or None, got {type(g).__name__}"
                    )
        return results

    def __repr__(self) -> str:
        return f"<{self.name()}>"


class AccumulateGrad(Node):
    """The node that appends incoming gradients to a leaf Variable's ``grad``.

    Example:
        >>> from afnio_langchain import Variable
        >>> x = Variable("Hello", role="greeting", requires_grad=True)
        >>> first, second = x + Variable(" world"), x + Variable(" there")
        >>> leaf = first.grad_fn.next_functions[0][0]
        >>> leaf.name(), leaf.variable is x, leaf is second.grad_fn.next_functions[0][0]
        ('AccumulateGrad', True, True)
        >>> first.backward("Add a comma.")
        >>> second.backward("Say it warmly.")
        >>> [g.data.rsplit(": ", 1)[-1] for g in x.grad]  # Add prefixes what it passes on
        ['Add a comma.', 'Say it warmly.']
    """

    def __init__(self, variable: Variable) -> None:
        super().__init__(type(self), FunctionCtx(), (), 1)
        self.variable = variable
        self.edge: tuple[Node | None, int] = (self, 0)  # shared by every op that reads it

    def name(self) -> str:
        return "AccumulateGrad"

    @property
    def freed(self) -> bool:
        return False

    def release(self) -> None:
        """Leaves outlive backward passes."""


_NO_EDGE: tuple[Node | None, int] = (None, 0)
_MAX_PLANS = 64
"""Argument plans kept per op (:meth:`_OpSpec.ordered`): the ways one op is called."""


def _edge(variable: Variable) -> tuple[Node | None, int]:
    if not variable._requires_grad:
        return _NO_EDGE
    if variable.grad_fn is not None:
        return (variable.grad_fn, variable.output_nr)
    if variable._accumulator is None:
        variable._accumulator = AccumulateGrad(variable)
    return variable._accumulator.edge


class Function:
    """Base class of differentiable operations.

    Subclasses define ``forward(ctx, *args, **kwargs)`` (or ``forward(*args, **kwargs)``
    plus ``setup_context(ctx, inputs, output)``) and ``backward(ctx, *grad_outputs)``,
    each as a staticmethod; either may instead (or also) be ``async`` under the names
    ``aforward``/``abackward``. Call ops with ``Op.apply(...)`` (or ``await Op.aapply``).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import Function
        >>> class Upper(Function):
        ...     @staticmethod
        ...     def forward(ctx, x):
        ...         return Variable(x.data.upper(), role=x.role)
        ...     @staticmethod
        ...     def backward(ctx, grad_output):
        ...         return Variable(grad_output.data, role="feedback")
        >>> x = Variable("hi", role="greeting", requires_grad=True)
        >>> y = Upper.apply(x)
        >>> y.data, y.grad_fn.name()
        ('HI', 'UpperBackward0')
        >>> y.backward("too loud")
        >>> x.grad[0].data
        'too loud'
    """

    @staticmethod
    def setup_context(ctx: FunctionCtx, inputs: tuple[Any, ...], output: Any) -> None:
        """Override together with a ctx-less ``forward`` to fill ``ctx`` separately."""

    @classmethod
    def _prepare(
        cls, args: tuple, kwargs: dict, spec: _OpSpec | None = None
    ) -> tuple[FunctionCtx, list[Variable], bool]:
        spec = spec or _spec(cls)
        if not spec.defined:
            raise TypeError(f"{cls.__name__} must define a static forward() (or aforward())")
        inputs = _variables_in(spec.ordered(cls, args, kwargs))
        flags = [v._requires_grad for v in inputs]
        record = True in flags and _GRAD_ENABLED.get()
        ctx = FunctionCtx()
        ctx.needs_input_grad = tuple(flags) if record else (False,) * len(flags)
        return ctx, inputs, record

    @classmethod
    def apply(cls, *args: Any, **kwargs: Any) -> Any:
        """Run ``forward`` and, when grad mode is on and an input requires grad, record
        the op in the graph so its outputs can be differentiated."""
        spec = _spec(cls)
        ctx, inputs, record = cls._prepare(args, kwargs, spec)
        token = _GRAD_ENABLED.set(False)
        try:
            if "forward" not in spec.defined:
                if spec.setup_context:
                    output = run_sync(lambda: cls._aforward_then_setup_context(ctx, args, kwargs))
                else:  # the usual op: its own coroutine, one layer less per node
                    output = run_sync(lambda: cls.aforward(ctx, *args, **kwargs))  # type: ignore[attr-defined]
            elif spec.setup_context:
                output = cls.forward(*args, **kwargs)
                cls.setup_context(ctx, (*args, *kwargs.values()), output)
            else:
                output = cls.forward(ctx, *args, **kwargs)
        finally:
            _GRAD_ENABLED.reset(token)
        return cls._record(ctx, inputs, output, record)

    @classmethod
    async def aapply(cls, *args: Any, **kwargs: Any) -> Any:
        """Async :meth:`apply`: awaits ``aforward`` when defined, else runs ``forward``
        in a worker thread."""
        spec = _spec(cls)
        ctx, inputs, record = cls._prepare(args, kwargs, spec)
        token = _GRAD_ENABLED.set(False)
        try:
            if "aforward" in spec.defined:
                if spec.setup_context:
                    output = await cls._aforward_then_setup_context(ctx, args, kwargs)
                else:  # the usual op: awaited here, one coroutine less per node
                    output = await cls.aforward(ctx, *args, **kwargs)  # type: ignore[attr-defined]
            elif spec.setup_context:
                output = await run_in_thread(cls.forward, *args, **kwargs)
                cls.setup_context(ctx, (*args, *kwargs.values()), output)
            else:
                output = await run_in_thread(cls.forward, ctx, *args, **kwargs)
        finally:
            _GRAD_ENABLED.reset(token)
        return cls._record(ctx, inputs, output, record)

    @classmethod
    async def _aforward_then_setup_context(
        cls, ctx: FunctionCtx, args: tuple, kwargs: dict
    ) -> Any:
        """A ctx-less ``aforward``, then ``setup_context`` (ops that define both)."""
        output = await cls.aforward(*args, **kwargs)  # type: ignore[attr-defined]
        cls.setup_context(ctx, (*args, *kwargs.values()), output)
        return output

    @classmethod
    def _record(
        cls, ctx: FunctionCtx, inputs: list[Variable], output: Any, record: bool
    ) -> Any:
        if not record:
            return output
        if type(output) is Variable:  # the usual op: one new Variable
            node = Node(cls, ctx, tuple([_edge(v) for v in inputs]), 1)
            for v in inputs:
                if v is output:  # an op returning its input: give the output its own node
                    output = output.detach()
                    break
            output._requires_grad = True
            output.grad_fn = node
            output.output_nr = 0
            return output
        outputs = list(output) if isinstance(output, tuple) else [output]
        node = Node(cls, ctx, tuple(_edge(v) for v in inputs), len(outputs))
        input_ids = {id(v) for v in inputs}
        for i, out in enumerate(outputs):
            if not isinstance(out, Variable):
                continue
            if id(out) in input_ids:  # an op returning its input: give the output its own node
                out = outputs[i] = out.detach()
            out._requires_grad = True
            out.grad_fn = node
            out.output_nr = i
        return tuple(outputs) if isinstance(output, tuple) else outputs[0]


class _OpSpec:
    """What ``apply`` needs to know about an op class, computed once per class: which
    of ``forward``/``aforward`` it defines, whether it uses ``setup_context``, and the
    parameters of its forward (to order the arguments as forward declares them)."""

    __slots__ = ("defined", "setup_context", "signature", "takes_ctx", "names", "index",
                 "required", "var_keyword", "max_positional", "_plans")

    def __init__(self, cls: type[Function]) -> None:
        classes = [k for k in cls.__mro__ if k is not Function and k is not object]
        self.defined = frozenset(
            name for k in classes for name in ("forward", "aforward") if name in k.__dict__
        )
        self.setup_context = any("setup_context" in k.__dict__ for k in classes)
        self.signature: inspect.Signature | None = None
        self._plans: dict[tuple, tuple[str, ...] | None] = {}
        if not self.defined:
            return
        forward = cls.forward if "forward" in self.defined else cls.aforward  # type: ignore[attr-defined]
        self.signature = inspect.signature(forward)
        self.takes_ctx = not self.setup_context
        params = list(self.signature.parameters.values())[1 if self.takes_ctx else 0 :]
        kinds = inspect.Parameter
        named = [p for p in params if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
        self.names = tuple(p.name for p in named)
        self.index = {p.name: i for i, p in enumerate(params) if p in named}
        self.required = frozenset(p.name for p in named if p.default is p.empty)
        self.var_keyword = any(p.kind is kinds.VAR_KEYWORD for p in params)
        positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY,
                                                      kinds.POSITIONAL_OR_KEYWORD)]
        has_var_positional = any(p.kind is kinds.VAR_POSITIONAL for p in params)
        self.max_positional = None if has_var_positional else len(positional)
        if any(p.kind is kinds.POSITIONAL_ONLY for p in params):
            self.index = {}  # rare: let Signature.bind order them
            self.max_positional = -1

    def ordered(self, cls: type, args: tuple, kwargs: dict) -> tuple | list:
        """The arguments in the order of forward's parameters, however they were passed
        (``Signature.bind`` for anything unusual, and for its error messages)."""
        n = len(args)
        if self.max_positional is not None and not 0 <= n <= self.max_positional:
            return self._bound(cls, args, kwargs)
        if kwargs:
            key = (n, *kwargs)  # an op is called the same way each time: plan it once
            plan = self._plans.get(key, False)
            if plan is False:
                plan = self._plan(n, kwargs)
                if len(self._plans) < _MAX_PLANS:
                    self._plans[key] = plan
            if plan is None:
                return self._bound(cls, args, kwargs)
            return [*args, *map(kwargs.__getitem__, plan)]
        if len(self.required) > n and not self.required.issubset(self.names[:n]):
            return self._bound(cls, args, kwargs)
        return args

    def _plan(self, n: int, kwargs: dict) -> tuple[str, ...] | None:
        """The keyword arguments' names in forward's order, after the ``n`` positional
        ones (named parameters first, then the ``**kwargs`` extras as passed); None
        when only ``Signature.bind`` can order them (or say what is wrong)."""
        index = self.index
        for key in kwargs:
            position = index.get(key)
            if (position is None and not self.var_keyword) or (
                position is not None and position < n
            ):
                return None
        if not self.required.issubset((*self.names[:n], *kwargs)):
            return None
        named = [name for name in self.names if name in kwargs]
        return (*named, *(key for key in kwargs if key not in index))

    def _bound(self, cls: type, args: tuple, kwargs: dict) -> list:
        assert self.signature is not None
        try:
            bound = (
                self.signature.bind(None, *args, **kwargs)
                if self.takes_ctx
                else self.signature.bind(*args, **kwargs)
            )
        except TypeError as exc:
            raise TypeError(f"{cls.__name__}.apply(): {exc}") from None
        values = list(bound.arguments.values())
        return values[1:] if self.takes_ctx else values


def _spec(cls: type) -> _OpSpec:
    spec = cls.__dict__.get("_afnio_op_spec")  # the class's own, not a base class's
    if spec is None:
        spec = _OpSpec(cls)
        type.__setattr__(cls, "_afnio_op_spec", spec)
    return spec


def _variables_in(values: Any) -> list[Variable]:
    """Every Variable inside ``values``, in order (see :func:`iter_variables`)."""
    found: list[Variable] = []
    _collect(values, found)
    return found


def _collect(value: Any, found: list[Variable]) -> None:
    kind = type(value)
    if kind is Variable:
        found.append(value)
        return
    if kind is list or kind is tuple:
        items: Any = value
    elif kind is dict:
        items = value.values()
    elif kind is str:
        return
    elif isinstance(value, Variable):
        found.append(value)
        return
    elif isinstance(value, (list, tuple)):
        items = value
    elif isinstance(value, dict):
        items = value.values()
    else:
        return
    for item in items:
        kind = type(item)
        if kind is Variable:
            found.append(item)
        elif kind is str:
            continue
        elif kind is dict:  # a chat message: walked here, one call less per message
            for part in item.values():
                part_kind = type(part)
                if part_kind is Variable:
                    found.append(part)
                elif part_kind is list:  # its content: walked here too, one call less
                    for piece in part:
                        if type(piece) is Variable:
                            found.append(piece)
                        elif type(piece) is not str:
                            _collect(piece, found)
                elif part_kind is not str and isinstance(part, (list, tuple, dict, Variable)):
                    _collect(part, found)
        elif isinstance(item, (list, tuple, dict, Variable)):
            _collect(item, found)


__all__ = ["AccumulateGrad", "Function", "FunctionCtx", "Node", "iter_variables"]
