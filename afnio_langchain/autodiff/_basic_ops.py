"""Text ops that pass feedback straight through: ``Add`` (``+``), ``Sum``, ``Split``."""

from __future__ import annotations

import json
from collections.abc import Sequence

from afnio_langchain.autodiff._function import Function, FunctionCtx
from afnio_langchain.autodiff._variable import Variable, make_gradient


def _join_roles(variables: Sequence[Variable]) -> str:
    return " and ".join(v.role for v in variables if v.role)


def _concat(variables: Sequence[Variable], sep: str) -> str | list[str]:
    sizes = {len(v.items()) for v in variables if v.is_batched}
    if len(sizes) > 1:
        raise ValueError(f"cannot combine minibatches of different sizes {sorted(sizes)}")
    if not sizes:
        return sep.join(str(v.data) for v in variables)
    n = sizes.pop()
    columns = [v.items() if v.is_batched else [v.data] * n for v in variables]
    return [sep.join(str(c) for c in row) for row in zip(*columns)]


def _feedback_for(grad_output: Variable, inputs: Sequence[Variable], needs: Sequence[bool]) -> tuple:
    return tuple(
        make_gradient(_shaped(grad_output, v), v) if need else None for v, need in zip(inputs, needs)
    )


def _shaped(grad_output: Variable, variable: Variable) -> str | list[str]:
    """Feedback on a batched output, reshaped for a scalar input: items joined."""
    if grad_output.is_batched and not variable.is_batched:
        return "\n\n".join(str(t) for t in grad_output.items() if str(t))
    return grad_output.data


class Add(Function):
    """Concatenation: ``x + y``. Roles are joined with " and "; both inputs receive the
    output's feedback. Minibatches are added item by item (a scalar is broadcast).

    Example:
        >>> from afnio_langchain import Variable
        >>> x = Variable("Be brief.", role="rule", requires_grad=True)
        >>> y = x + Variable(" Use French.", role="language rule")
        >>> y.data, y.role
        ('Be brief. Use French.', 'rule and language rule')
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Variable, y: Variable) -> Variable:
        ctx.save_for_backward(x, y)
        return Variable(_concat([x, y], ""), role=_join_roles([x, y]))

    @staticmethod
    def backward(ctx: FunctionCtx, grad_output: Variable) -> tuple:
        return _feedback_for(grad_output, ctx.saved_variables, ctx.needs_input_grad)


class Sum(Function):
    """Joins a list of Variables with ``separator`` (default a blank line); each input
    receives the output's feedback.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import Sum
        >>> Sum.apply([Variable("a", role="x"), Variable("b", role="y")]).data
        'a\\n\\nb'
    """

    @staticmethod
    def forward(ctx: FunctionCtx, variables: Sequence[Variable], separator: str = "\n\n") -> Variable:
        if isinstance(variables, Variable) or not all(isinstance(v, Variable) for v in variables):
            raise TypeError("Sum expects a list of Variables")
        if not variables:
            raise ValueError("Sum of an empty list")
        ctx.save_for_backward(*variables)
        return Variable(_concat(variables, separator), role=_join_roles(variables))

    @staticmethod
    def backward(ctx: FunctionCtx, grad_output: Variable) -> tuple:
        return _feedback_for(grad_output, ctx.saved_variables, ctx.needs_input_grad)


class Split(Function):
    """Splits a text Variable like ``str.split(sep, maxsplit)``: one output per part.
    Feedback on the parts is gathered, labelled by part, into one gradient for ``x``.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import Split
        >>> first, second = Split.apply(Variable("a|b", role="pair"), "|")
        >>> first.data, second.role
        ('a', 'pair (part 2 of 2)')
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: Variable, sep: str | None = None, maxsplit: int = -1
    ) -> tuple[Variable, ...]:
        if not isinstance(x, Variable):
            raise TypeError(f"Split expects a Variable, got {type(x).__name__}")
        if x.is_batched:
            raise TypeError("Split works on a single text, not a minibatch (the part counts differ)")
        parts = str(x.data).split(sep, maxsplit)
        ctx.save_for_backward(x)
        ctx.num_parts = len(parts)
        n = len(parts)
        return tuple(Variable(p, role=f"{x.role} (part {k + 1} of {n})") for k, p in enumerate(parts))

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Variable | None) -> Variable | None:
        (x,) = ctx.saved_variables
        notes = [
            f"Part {k + 1} of {ctx.num_parts}: {g.data}"
            for k, g in enumerate(grad_outputs)
            if g is not None and str(g.data)
        ]
        return make_gradient("\n".join(notes), x) if notes else None


class TextTransform(Function):
    """Applies a plain Python ``str -> str`` function to a Variable's text (each item of
    a minibatch) and passes feedback on the result back to the input, saying which
    transformation it went through.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import TextTransform
        >>> x = Variable("  Answer: 42 ", role="reply", requires_grad=True)
        >>> y = TextTransform.apply(x, lambda t: t.split(":")[1].strip(), "extract the answer")
        >>> y.data, y.role
        ('42', 'reply (after extract the answer)')
        >>> y.backward("Should be 43.")
        >>> x.grad[0].data
        'Feedback on the result of extract the answer applied to this text: Should be 43.'
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Variable, func, description: str = "") -> Variable:
        if not isinstance(x, Variable):
            raise TypeError(f"TextTransform expects a Variable, got {type(x).__name__}")
        if not callable(func):
            raise TypeError("TextTransform needs a callable str -> str")
        results = [func(str(item)) for item in x.items()]
        for r in results:
            if isinstance(r, bool) or not isinstance(r, (str, int, float)):
                raise TypeError(
                    f"the function given to TextTransform must return text, got {type(r).__name__}"
                )
        label = description or getattr(func, "__name__", "a function")
        ctx.label = label
        ctx.save_for_backward(x)
        return Variable(results if x.is_batched else results[0], role=f"{x.role} (after {label})")

    @staticmethod
    def backward(ctx: FunctionCtx, grad_output: Variable) -> Variable:
        (x,) = ctx.saved_variables
        prefix = f"Feedback on the result of {ctx.label} applied to this text: "
        items = [f"{prefix}{t}" if str(t) else "" for t in grad_output.items()]
        return make_gradient(items if x.is_batched else items[0], x)


class ParseJson(Function):
    """Parses the JSON object in a Variable's text into one output Variable per key (in
    key order; values that are not text become JSON text). Feedback on any field goes
    back to the input, labelled with the field's name.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ParseJson
        >>> answer, = ParseJson.apply(Variable('{"answer": "42"}', role="reply"))
        >>> answer.data, answer.role
        ('42', 'reply, field "answer"')
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Variable) -> tuple[Variable, ...]:
        from afnio_langchain.models import parse_json_object

        if not isinstance(x, Variable):
            raise TypeError(f"ParseJson expects a Variable, got {type(x).__name__}")
        parsed = []
        for i, item in enumerate(x.items()):
            try:
                parsed.append(parse_json_object(str(item)))
            except ValueError:
                where = f" (item {i})" if x.is_batched else ""
                raise ValueError(f"{x.role or 'text'}{where} holds no JSON object: {str(item)[:300]!r}") from None
        keys = list(dict.fromkeys(k for obj in parsed for k in obj))

        def text(value: object) -> str:
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

        ctx.keys = keys
        ctx.save_for_backward(x)
        outputs = []
        for key in keys:
            values = [text(obj.get(key, "")) for obj in parsed]
            outputs.append(Variable(values if x.is_batched else values[0], role=f'{x.role}, field "{key}"'))
        return tuple(outputs)

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Variable | None) -> Variable | None:
        (x,) = ctx.saved_variables
        n = len(x.items())
        notes: list[list[str]] = [[] for _ in range(n)]
        for key, grad in zip(ctx.keys, grad_outputs):
            if grad is None:
                continue
            for i, t in enumerate(grad.items() if grad.is_batched else [grad.data] * n):
                if str(t):
                    notes[i].append(f'Field "{key}": {t}')
        items = ["\n".join(lines) for lines in notes]
        if not any(items):
            return None
        return make_gradient(items if x.is_batched else items[0], x)
