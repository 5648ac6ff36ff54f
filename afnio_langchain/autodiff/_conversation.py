"""Seed-form messages and inputs -> one plain conversation per minibatch item, plus the
"slots" that say which Variable fed which item (used to route gradients back)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from afnio_langchain.autodiff._templating import MissingInputError, fill
from afnio_langchain.autodiff._variable import Variable, make_gradient
from afnio_langchain.models import Message

ROLES = ("system", "user", "assistant")
CONTENT_SEPARATOR = "\n"


@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen __init__ costs twice as much
class Slot:
    """One Variable input of a chat op and how it maps onto minibatch items.

    ``item`` is the index of the only item it feeds (a Variable inside an input list),
    or None when it feeds every item (its value per item is ``value(i)``).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import build_conversation
        >>> system = Variable("Greet {name}.", role="system prompt", requires_grad=True)
        >>> names = ["Ada", Variable("Bob", role="name")]
        >>> conversation = build_conversation([{"role": "system", "content": [system]}],
        ...                                   inputs={"name": names})
        >>> shared, own = conversation.slots
        >>> shared.feeds(0), shared.feeds(1), own.item, own.feeds(0), own.value(1)
        (True, True, 1, False, 'Bob')
    """

    variable: Variable
    item: int | None = None

    def feeds(self, i: int) -> bool:
        return self.item is None or self.item == i

    def value(self, i: int) -> str:
        data = self.variable.data
        return str(data[i] if isinstance(data, list) else data)


@dataclass(slots=True)
class Conversation:
    """The rendered conversations of a minibatch and the Variable slots behind them.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import build_conversation
        >>> system = Variable("Translate to {language}.", role="system prompt", requires_grad=True)
        >>> conversation = build_conversation(
        ...     [{"role": "system", "content": [system]}, {"role": "user", "content": ["{word}"]}],
        ...     inputs={"language": "Italian", "word": ["cat", "dog"]})
        >>> conversation.size, conversation.batched, [s.variable.role for s in conversation.slots]
        (2, True, ['system prompt'])
        >>> conversation.items[1]
        [{'role': 'system', 'content': 'Translate to Italian.'}, {'role': 'user', 'content': 'dog'}]
    """

    items: list[list[Message]]
    batched: bool
    slots: list[Slot]

    @property
    def size(self) -> int:
        return len(self.items)


def _check_content(content: Any, where: str) -> list[Variable | str]:
    parts = content if isinstance(content, (list, tuple)) else [content]
    for part in parts:
        kind = type(part)
        if kind is not Variable and kind is not str and not isinstance(part, (Variable, str)):
            raise TypeError(
                f"{where}: content must be a Variable, a str or a list of them, "
                f"got {type(part).__name__}"
            )
    return list(parts)


def _check_messages(messages: Any) -> list[tuple[str, list[Variable | str]]]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(
            "messages must be a non-empty list of {'role': ..., 'content': [Variable, ...]} "
            f"dicts, got {type(messages).__name__}"
        )
    checked = []
    for k, message in enumerate(messages):
        if (type(message) is not dict and not isinstance(message, Mapping)) or (
            "role" not in message or "content" not in message
        ):
            raise TypeError(
                f"message {k} must be a dict with 'role' and 'content', got {message!r:.200}"
            )
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"message {k} has role {role!r}; expected one of {ROLES}")
        content = message["content"]
        if type(content) is list:
            for part in content:  # the usual content: a list of Variables and strings
                if type(part) is not Variable and type(part) is not str:
                    checked.append((role, _check_content(content, f"message {k} ({role})")))
                    break
            else:
                checked.append((role, list(content)))
        else:
            checked.append((role, _check_content(content, f"message {k} ({role})")))
    return checked


def _check_inputs(inputs: Any) -> dict[str, Any]:
    if inputs is None:
        return {}
    if type(inputs) is not dict and not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict of name -> value, got {type(inputs).__name__}")
    for name, value in inputs.items():
        if type(name) is not str:
            raise TypeError(f"input names must be str, got {name!r}")
        kind = type(value)
        if kind is str or (kind is Variable and type(value._data) is not list):
            continue  # the usual input: one text
        is_list = isinstance(value, list)
        for v in value if is_list else [value]:
            if not isinstance(v, (Variable, str, int, float)) or isinstance(v, bool):
                raise TypeError(
                    f"input {name!r} must be a str, a Variable or a list of them, "
                    f"got {type(v).__name__}"
                )
            if is_list and isinstance(v, Variable) and v.is_batched:
                raise TypeError(f"input {name!r}: a list of inputs cannot hold batched Variables")
    return dict(inputs)


def _batch_size(messages: list[tuple[str, list]], inputs: dict[str, Any]) -> int | None:
    sizes: list[tuple[str, int]] = []  # (where, size) of each list-valued input or part
    for name, value in inputs.items():
        kind = type(value)
        if kind is str or (kind is Variable and type(value._data) is not list):
            continue  # the usual input: one text
        if isinstance(value, list):
            sizes.append((f"input {name!r}", len(value)))
        elif isinstance(value, Variable) and value.is_batched:
            sizes.append((f"input {name!r}", len(value.data)))
    for k, (role, parts) in enumerate(messages):
        for part in parts:
            kind = type(part)
            if kind is str or (kind is Variable and type(part._data) is not list):
                continue  # the usual part: a template or one text
            if isinstance(part, Variable) and part.is_batched:
                sizes.append((f"message {k} ({role})", len(part.data)))
    if not sizes:
        return None
    if len({n for _, n in sizes}) > 1:
        detail = ", ".join(f"{where}: {n}" for where, n in dict(sizes).items())
        raise ValueError(f"minibatch inputs disagree in length ({detail})")
    size = sizes[0][1]
    if size == 0:
        raise ValueError("minibatch inputs are empty lists")
    return size


def _item_text(value: Any, i: int) -> str:
    kind = type(value)
    if kind is str:
        return value
    if kind is list:
        value = value[i]
        kind = type(value)
        if kind is str:
            return value
    if kind is Variable:
        data = value._data
        if type(data) is str:
            return data
        return str(data[i] if type(data) is list else data)  # not items(): no list copy
    if isinstance(value, Variable):
        data = value.data
        return str(data[i] if type(data) is list else data)
    return str(value)


def build_conversation(messages: Any, inputs: Any = None) -> Conversation:
    """Validate, detect the minibatch and render every item (before any model call).

    Raises:
        TypeError: Wrong shapes or types; the message says what was expected.
        ValueError: Unknown role, or minibatch inputs of different lengths.
        MissingInputError: A template names an input that was not given.
    """
    if type(messages) is list and (inputs is None or type(inputs) is dict):
        single = _single_conversation(messages, inputs)
        if single is not None:
            return single
    checked = _check_messages(messages)
    values = _check_inputs(inputs)
    slots = [
        Slot(part)
        for _, parts in checked
        for part in parts
        if type(part) is not str and isinstance(part, Variable)
    ]
    for value in values.values():
        if type(value) is str:
            continue
        if isinstance(value, list):
            slots += [Slot(v, item=i) for i, v in enumerate(value) if isinstance(v, Variable)]
        elif isinstance(value, Variable):
            slots.append(Slot(value))
    size = _batch_size(checked, values)
    if size is None:  # one conversation: no minibatch to render item by item
        return Conversation([_render(checked, values, 0)], False, slots)  # positional: cheaper
    items = [_render(checked, values, i) for i in range(size)]
    return Conversation(items, True, slots)


def _single_conversation(messages: list, inputs: dict[str, Any] | None) -> Conversation | None:
    """The usual call of :func:`build_conversation` in one pass: text inputs (str, or
    Variables holding one str), and messages whose parts are str or Variables holding
    one str. None for anything else, a minibatch or an error included: the general
    path then checks, renders and raises with its messages. It is read once per chat
    op, so the pass over messages and inputs is done once, not four times."""
    if not messages:
        return None
    values: dict[str, str] = {}
    input_slots: list[Slot] = []
    if inputs:
        for name, value in inputs.items():
            kind = type(value)
            if type(name) is not str:
                return None
            if kind is str:
                values[name] = value
            elif kind is Variable and type(value._data) is str:
                values[name] = value._data
                input_slots.append(Slot(value))
            else:
                return None
    slots: list[Slot] = []
    rendered: list[Message] = []
    for message in messages:
        if type(message) is not dict:
            return None
        role = message.get("role")
        content = message.get("content")
        if role not in ROLES or type(content) is not list or not content:
            return None
        texts = []
        for part in content:
            kind = type(part)
            if kind is str:
                text = part
            elif kind is Variable and type(part._data) is str:
                text = part._data
                slots.append(Slot(part))
            else:
                return None
            if "{" in text:
                try:
                    text = fill(text, values)
                except MissingInputError:  # the general path names the message
                    return None
            texts.append(text)
        rendered.append(
            {"role": role, "content": texts[0] if len(texts) == 1 else CONTENT_SEPARATOR.join(texts)}
        )
    if input_slots:
        slots += input_slots
    return Conversation([rendered], False, slots)


def item_renderer(messages: Any, inputs: Any) -> Callable[[int], list[Message]]:
    """Renders item ``i`` of :func:`build_conversation` alone, from the inputs' data at
    that moment (for an input whose items arrive one by one: ``_forward_streams``); the
    messages and inputs are checked once, here."""
    checked, values = _check_messages(messages), _check_inputs(inputs)
    return lambda i: _render(checked, values, i)


def _render(checked: list[tuple[str, list]], values: dict[str, Any], i: int) -> list[Message]:
    item_values = {name: _item_text(value, i) for name, value in values.items()}
    return [
        {"role": role, "content": _content(parts, i, item_values, k, role)}
        for k, (role, parts) in enumerate(checked)
    ]


def _content(parts: list, i: int, item_values: dict[str, str], k: int, role: str) -> str:
    """Message ``k``'s text for item ``i``: its parts' texts, fields filled, joined."""
    if len(parts) == 1:  # the usual message: one Variable or one template
        text = _item_text(parts[0], i)
        return fill(text, item_values, where=f"message {k} ({role})") if "{" in text else text
    texts = [_item_text(part, i) for part in parts]
    for j, text in enumerate(texts):
        if "{" in text:  # a template (most prompts have no field: nothing to fill)
            texts[j] = fill(text, item_values, where=f"message {k} ({role})")
    return CONTENT_SEPARATOR.join(texts)


def gradients_for_slots(
    slots: Sequence[Slot],
    needs_grad: Sequence[bool],
    per_item: Sequence[dict[int, str] | None],
) -> list[Variable | list[Variable] | None]:
    """Assemble per-item feedback texts into one gradient entry per slot.

    ``per_item[i]`` maps slot index -> feedback text written for item ``i`` (None when
    item ``i`` made no backward call). A Variable shared by all items gets one gradient
    per item; a batched Variable gets one list-valued gradient; an item's own Variable
    gets its single gradient.
    """
    by_slot: dict[int, list[tuple[int, str]]] = {}  # one pass over the items, not one per slot
    for i, item in enumerate(per_item):
        if item:
            for j, text in item.items():
                by_slot.setdefault(j, []).append((i, text))
    out: list[Variable | list[Variable] | None] = []
    for j, slot in enumerate(slots):
        if not needs_grad[j]:
            out.append(None)
            continue
        texts = by_slot.get(j, [])
        if not texts:
            out.append(None)
        elif slot.variable.is_batched:
            data = [""] * len(slot.variable.items())
            for i, text in texts:
                data[i] = text
            out.append(make_gradient(data, slot.variable))
        elif slot.item is not None:
            out.append(make_gradient(texts[0][1], slot.variable))
        else:
            out.append([make_gradient(text, slot.variable) for _, text in texts])
    return out
