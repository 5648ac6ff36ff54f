"""Ops that combine or split values and pass feedback straight through: ``Add``
(``+``), ``Sum``, ``Split``. Numbers add and text concatenates, as in afnio; feedback
reaching an input is prefixed as afnio's is, so the model reading it knows it was
about a combination of that input with others."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from afnio_langchain.autodiff._function import Function, FunctionCtx
from afnio_langchain.autodiff._variable import Data, Variable, make_gradient

COMBINED_FEEDBACK = "Here is the combined feedback we got for this specific {role} and other variables: "
"""Prefix of the feedback ``Add``, ``Sum`` and ``Split`` pass to an input (afnio's wording)."""


def _join_roles(variables: Sequence[Variable]) -> str:
    return " and ".join(v.role for v in variables if v.role)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _items(item_text: str) -> str:
    return f"<ITEM>{item_text}</ITEM>"


def _columns(variables: Sequence[Variable]) -> tuple[int | None, list[list[Any]]]:
    """The minibatch size (None when no input is a minibatch) and each input's items,
    a single value being broadcast over the minibatch."""
    sizes = {len(v.items()) for v in variables if v.is_batched}
    if len(sizes) > 1:
        raise ValueError(f"cannot combine minibatches of different sizes {sorted(sizes)}")
    n = sizes.pop() if sizes else None
    return n, [v.items() if v.is_batched else [v.data] * (n or 1) for v in variables]


def _combine(variables: Sequence[Variable], join) -> Data:
    n, columns = _columns(variables)
    rows = [join(list(row)) for row in zip(*columns)]
    return rows if n is not None else rows[0]


def _add(values: list[Any]) -> Any:
    if all(_is_number(v) for v in values):
        return values[0] + values[1]
    return "".join(str(v) for v in values)


def _feedback_for(grad_output: Variable, inputs: Sequence[Variable], needs: Sequence[bool]) -> tuple:
    return tuple(
        _combined_feedback(_shaped(grad_output, v), v) if need else None
        for v, need in zip(inputs, needs)
    )


def _combined_feedback(data: Data, variable: Variable) -> Variable | None:
    """``data`` with afnio's prefix on every non-empty text (empty items stay empty,
    so items without feedback still cost no backward call upstream)."""
    prefix = COMBINED_FEEDBACK.format(role=variable.role or "variable")
    items = data if isinstance(data, list) else [data]
    if not any(str(t) for t in items):
        return None
    wrapped = [prefix + str(t) if str(t) else "" for t in items]
    return make_gradient(wrapped if isinstance(data, list) else wrapped[0], variable)


def _shaped(grad_output: Variable, variable: Variable) -> Data:
    """Feedback on a minibatch output, for an input holding one value: one text with
    each item's feedback in an ``<ITEM>`` tag."""
    if grad_output.is_batched and not variable.is_batched:
        texts = [str(t) for t in grad_output.items()]
        return "".join(_items(t) for t in texts) if any(texts) else ""
    return grad_output.data


class Add(Function):
    """``x + y``: numbers add, text concatenates (a number next to text is written as
    text); minibatches are added item by item (a single value is broadcast). Roles are
    joined with " and "; both inputs receive the output's feedback.

    Example:
        >>> from afnio_langchain import Variable
        >>> x = Variable("Be brief.", role="rule", requires_grad=True)
        >>> y = x + Variable(" Use French.", role="language rule")
        >>> y.data, y.role
        ('Be brief. Use French.', 'rule and language rule')
        >>> (Variable([1, 2, 3]) + Variable([4, 5, 6])).data
        [5, 7, 9]
        >>> y.backward("Too formal.")
        >>> x.grad[0].data
        'Here is the combined feedback we got for this specific rule and other variables: Too formal.'
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x: Variable, y: Variable) -> Variable:
        ctx.save_for_backward(x, y)
        return Variable(_combine([x, y], _add), role=_join_roles([x, y]))

    @staticmethod
    def backward(ctx: FunctionCtx, grad_output: Variable) -> tuple:
        return _feedback_for(grad_output, ctx.saved_variables, ctx.needs_input_grad)


class Sum(Function):
    """Sums a list of Variables: numbers add; texts are each wrapped in
    ``<ITEM></ITEM>`` and concatenated (afnio's form), or joined with ``separator`` when
    one is given. Minibatches are summed item by item; every input receives the
    output's feedback.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import Sum
        >>> Sum.apply([Variable("a", role="x"), Variable("b", role="y")]).data
        '<ITEM>a</ITEM><ITEM>b</ITEM>'
        >>> Sum.apply([Variable("a"), Variable("b")], separator=" | ").data
        'a | b'
        >>> Sum.apply([Variable([1, 2, 3.5]), Variable([4, 5, 6])]).data
        [5.0, 7.0, 9.5]
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx, variables: Sequence[Variable], separator: str | None = None
    ) -> Variable:
        if isinstance(variables, Variable) or not all(isinstance(v, Variable) for v in variables):
            raise TypeError("Sum expects a list of Variables")
        if not variables:
            raise ValueError("Sum of an empty list")
        if separator is not None and not isinstance(separator, str):
            raise TypeError(f"separator must be a str, got {type(separator).__name__}")

        def total(values: list[Any]) -> Any:
            if all(_is_number(v) for v in values):
                return sum(values)
            if separator is not None:
                return separator.join(str(v) for v in values)
            return "".join(_items(str(v)) for v in values)

        ctx.save_for_backward(*variables)
        return Variable(_combine(variables, total), role=_join_roles(variables))

    @staticmethod
    def backward(ctx: FunctionCtx, grad_output: Variable) -> tuple:
        return _feedback_for(grad_output, ctx.saved_variables, ctx.needs_input_grad)


def _value(value: Any, name: str, kind: type | tuple[type, ...]) -> Any:
    if isinstance(value, Variable):
        value = value.data
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        raise TypeError(f"Split {name} has the wrong type: {type(value).__name__}")
    return value


class Split(Function):
    """Splits text like ``str.split(sep, maxsplit)``: one output per part, with the role
    ``"split part <k> of <role>"``. A minibatch is split item by item, shorter splits
    padded with ``""``, so output ``k`` holds every item's part ``k``. Feedback on the
    parts goes back to the input as one text per backward pass, each part's feedback
    in an ``<ITEM>`` tag (empty for parts that got none).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import Split
        >>> x = Variable("afnio is great!", role="sentence", requires_grad=True)
        >>> first, rest = Split.apply(x, sep=" ", maxsplit=1)
        >>> first.data, rest.data, first.role
        ('afnio', 'is great!', 'split part 0 of sentence')
        >>> [v.data for v in Split.apply(Variable(["a b c", "d e"]), " ")]
        [['a', 'd'], ['b', 'e'], ['c', '']]
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: Variable,
        sep: str | Variable | None = None,
        maxsplit: int | Variable = -1,
    ) -> tuple[Variable, ...]:
        if not isinstance(x, Variable):
            raise TypeError(f"Split expects a Variable, got {type(x).__name__}")
        sep = _value(sep, "sep", str)
        maxsplit = _value(maxsplit, "maxsplit", int)
        if any(not isinstance(item, str) for item in x.items()):
            raise TypeError("Split works on text (a str or a minibatch of str)")
        splits = [item.split(sep, maxsplit) for item in x.items()]
        width = max(len(parts) for parts in splits)
        ctx.num_parts = width
        ctx.save_for_backward(x)
        outputs = []
        for k in range(width):
            column = [parts[k] if k < len(parts) else "" for parts in splits]
            outputs.append(Variable(column if x.is_batched else column[0], role=f"split part {k} of {x.role}"))
        return tuple(outputs)

    @staticmethod
    def backward(ctx: FunctionCtx, *grad_outputs: Variable | None) -> tuple:
        (x,) = ctx.saved_variables
        n = len(x.items())

        def part(grad: Variable | None, i: int) -> str:
            if grad is None:
                return ""
            return str(grad.items()[i] if grad.is_batched else grad.data)

        texts = []
        for i in range(n):
            parts = [part(g, i) for g in grad_outputs]
            texts.append("".join(_items(p) for p in parts) if any(parts) else "")
        gradient = _combined_feedback(texts if x.is_batched else texts[0], x)
        # sep and maxsplit may be Variables too: they get no feedback.
        return (gradient,) + (None,) * (len(ctx.needs_input_grad) - 1)


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


def _field_note(keys: list[str], text: str) -> str:
    if len(keys) == 1:
        return f'Field "{keys[0]}": {text}'
    return "Fields " + ", ".join(f'"{k}"' for k in keys) + f": {text}"


class ParseJson(Function):
    """Parses the JSON object in a Variable's text into one output Variable per key (in
    key order; values that are not text become JSON text). Feedback on any field goes
    back to the input, labelled with the field's name (one text given to several fields
    goes back once, labelled with all of them).

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
    def backward(ctx: FunctionCtx, *grad_outputs: Variable | None) -> tuple:
        (x,) = ctx.saved_variables
        n = len(x.items())
        # Per item: each feedback text once, with the fields it was given on (feedback
        # on a whole dict output reaches every field with the same text).
        notes: list[dict[str, list[str]]] = [{} for _ in range(n)]
        for key, grad in zip(ctx.keys, grad_outputs):
            if grad is None:
                continue
            for i, t in enumerate(grad.items() if grad.is_batched else [grad.data] * n):
                if str(t):
                    notes[i].setdefault(str(t), []).append(key)
        items = ["\n".join(_field_note(keys, t) for t, keys in item.items()) for item in notes]
        if not any(items):
            return None
        return make_gradient(items if x.is_batched else items[0], x)
