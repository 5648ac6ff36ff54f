"""``ChatCompletion``: an LLM call as a differentiable operation."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from afnio_langchain.autodiff._conversation import Conversation, build_conversation, item_renderer
from afnio_langchain.autodiff._forward_streams import (
    PendingItems,
    open_streamed_output,
    pending_items,
)
from afnio_langchain.autodiff._function import FunctionCtx
from afnio_langchain.autodiff._llm_function import DEFAULT_OUTPUT_ROLE, LLMFunction
from afnio_langchain.autodiff._minibatch import (
    ITEM_ERROR_POLICIES,
    ItemFailureWarning,
    MinibatchError,
    describe_error,
    gather_items,
    mark_failed_items,
    mark_incomplete_items,
)
from afnio_langchain.autodiff._variable import Variable
from afnio_langchain.models import resolve_call_model

TextSink = Callable[[str], None]
_NO_FAILED_ITEMS: frozenset[int] = frozenset()
_STREAM_SINK: contextvars.ContextVar[TextSink | None] = contextvars.ContextVar(
    "afnio_stream_sink", default=None
)


@contextlib.contextmanager
def stream_text_to(sink: TextSink) -> Iterator[None]:
    """Inside the block, a single (non-minibatch) ChatCompletion forward streams its
    reply's text chunks to ``sink`` as they arrive; the output Variable is still built
    once, at the end. Used by the Runnable face for ``stream``/``astream``."""
    token = _STREAM_SINK.set(sink)
    try:
        yield
    finally:
        _STREAM_SINK.reset(token)


async def _complete_all(
    client: Any,
    conversation: Conversation,
    completion_args: dict[str, Any],
    streamed: _Streamed | None = None,
) -> tuple[list[Any], dict[int, BaseException]]:
    """Every item's reply (text or Completion; None where it failed) and the failed
    items' errors; with ``streamed``, each item waits for its own inputs and hands its
    text on as soon as it has it (``_forward_streams``)."""
    sink = _STREAM_SINK.get()
    if sink is not None and not conversation.batched and hasattr(client, "astream"):
        reply = _streamed_reply(client, conversation.items[0], completion_args, sink)
        return await gather_items([reply])

    if not conversation.batched:  # one call: no task to start, no items to gather
        try:
            reply = await client.acomplete(
                conversation.items[0], purpose="forward", **completion_args
            )
        except Exception as exc:
            return [None], {0: exc}
        return [reply], {}

    async def one(i: int) -> Any:
        if streamed is None:
            return await client.acomplete(conversation.items[i], purpose="forward", **completion_args)
        try:
            await streamed.inputs_of(i, conversation)
            reply = await client.acomplete(conversation.items[i], purpose="forward", **completion_args)
        except Exception as exc:
            streamed.failed(i, exc)
            raise
        streamed.replied(i, getattr(reply, "text", reply))
        return reply

    return await gather_items([one(i) for i in range(conversation.size)])


async def _streamed_reply(
    client: Any, messages: list[dict[str, str]], completion_args: dict[str, Any], sink: TextSink
) -> Any:
    """One reply streamed to ``sink``: the whole reply as a Completion where the client
    ends its stream with one (``astream_reply``), so that it is marked as ``invoke``'s
    is; else the text."""
    read = getattr(client, "astream_reply", None) or client.astream
    chunks: list[str] = []
    reply = None
    async for piece in read(messages, purpose="forward", **completion_args):
        if isinstance(piece, str):
            chunks.append(piece)
            sink(piece)
        else:
            reply = piece
    text = "".join(chunks)
    if reply is None:
        return text
    return reply if reply.text == text else dataclasses.replace(reply, text=text)


class _Streamed:
    """A minibatch forward whose inputs or output are streamed between pipeline stages."""

    def __init__(
        self,
        messages: Any,
        inputs: Any,
        upstream: list[PendingItems],
        output: tuple[Variable, PendingItems] | None,
        placeholder: str | None,
    ) -> None:
        self.render = item_renderer(messages, inputs) if upstream else None
        self.upstream = upstream
        self.output = output
        self.placeholder = placeholder  # the text of a failed item (None: it fails)

    async def inputs_of(self, i: int, conversation: Conversation) -> None:
        if self.render is not None:
            for items in self.upstream:
                await items.item(i)
            conversation.items[i] = self.render(i)

    def replied(self, i: int, text: str) -> None:
        if self.output is not None:
            self.output[1].put(i, text)

    def failed(self, i: int, error: BaseException) -> None:
        if self.output is None:
            return
        if self.placeholder is not None:
            self.output[1].put(i, self.placeholder)
        else:  # this stage will raise: the next one asks for no further item
            self.output[1].fail_all(error)

    async def upstream_recorded(self) -> None:
        for items in self.upstream:
            await items.recorded


def _streaming(
    ctx: FunctionCtx,
    messages: Any,
    inputs: Any,
    conversation: Conversation,
    output_role: str,
    policy: str,
    placeholder: str,
) -> _Streamed | None:
    """How this forward streams (None: it does not): inputs still arriving from an
    earlier pipeline stage, and/or its output handed on to the next one."""
    if not conversation.batched:
        return None
    upstream = [p for p in (pending_items(s.variable) for s in conversation.slots) if p is not None]
    output = open_streamed_output(
        conversation.size, output_role, any(ctx.needs_input_grad)
    )
    if not upstream and output is None:
        return None
    return _Streamed(
        messages, inputs, upstream, output, placeholder if policy == "placeholder" else None
    )


def _item_error_policy(completion_args: dict[str, Any]) -> tuple[str, str]:
    policy = completion_args.pop("on_item_error", "raise")
    placeholder = completion_args.pop("item_placeholder", "")
    if policy not in ITEM_ERROR_POLICIES:
        raise ValueError(f"on_item_error must be one of {ITEM_ERROR_POLICIES}, got {policy!r}")
    if not isinstance(placeholder, str):
        raise TypeError(f"item_placeholder must be a str, got {type(placeholder).__name__}")
    return policy, placeholder


class ChatCompletion(LLMFunction):
    """A chat completion whose messages and inputs receive textual gradients.

    ``messages`` is a list of ``{"role": ..., "content": [Variable, ...]}`` dicts whose
    content may hold ``{name}`` fields, filled from ``inputs`` (strings, Variables, or
    lists of them). List inputs (or Variables holding lists) make a minibatch: one
    concurrent model call per item, and the output's ``data`` is the list of replies.
    Backward makes one model call per output item with feedback, asking for one
    gradient per Variable in ``messages`` and ``inputs`` that requires grad.

    Reserved keyword arguments (not sent to the model): ``backward_model`` (the model
    writing gradients; default: :func:`set_backward_model`) and ``output_role``. With an
    ``openai.OpenAI``/``AsyncOpenAI`` client, ``model="NAME"`` names the model (also used
    for an openai ``backward_model``).
    Everything else in ``completion_args`` (``temperature``, ``max_tokens``...) is
    passed to the model.

    When minibatch items fail (after the client's retries), the other items still
    complete. ``on_item_error`` (reserved) says what happens then: ``"raise"`` (the
    default) raises :class:`~afnio_langchain.autodiff.MinibatchError`, naming every
    failed item and its error and carrying the other items' replies in ``.results``
    (a single, non-minibatch call raises its own error unchanged);
    ``"placeholder"`` puts ``item_placeholder`` (reserved, default ``""``) in each
    failed item's place, warns with an ``ItemFailureWarning``, records the items
    (:func:`~afnio_langchain.autodiff.failed_items`) and makes no backward call for
    them.

    Example:
        >>> from afnio_langchain import Variable, set_backward_model
        >>> from afnio_langchain.autodiff import ChatCompletion
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(forward="CIAO", feedback="Ask for capital letters.")
        >>> set_backward_model(model)
        >>> system = Variable("You are a helpful assistant.", role="system instruction",
        ...                   requires_grad=True)
        >>> user = Variable("Translate 'Hello' to {language}.", role="user query")
        >>> messages = [{"role": "system", "content": [system]},
        ...             {"role": "user", "content": [user]}]
        >>> response = ChatCompletion.apply(model, messages,
        ...                                 inputs={"language": Variable("Italian")})
        >>> response.data
        'CIAO'
        >>> response.backward("Use only capital letters.")
        >>> system.grad[0].data
        'Ask for capital letters.'
        >>> set_backward_model(None)
    """

    @staticmethod
    async def aforward(
        ctx: FunctionCtx,
        forward_model_client: Any,
        messages: list[dict[str, Any]],
        inputs: dict[str, Any] | None = None,
        **completion_args: Any,
    ) -> Variable:
        backward_model = completion_args.pop("backward_model", None)
        output_role = completion_args.pop("output_role", DEFAULT_OUTPUT_ROLE)
        policy, placeholder = _item_error_policy(completion_args)
        client, backward_model = resolve_call_model(
            forward_model_client, completion_args, backward_model
        )
        conversation = build_conversation(messages, inputs)
        streamed = _streaming(ctx, messages, inputs, conversation, output_role, policy, placeholder)
        replies, errors = await _complete_all(client, conversation, completion_args, streamed)
        if streamed is not None:
            await streamed.upstream_recorded()  # our inputs are in the graph before we are
        if errors:
            received = [None if r is None else getattr(r, "text", r) for r in replies]
            if policy == "raise":
                if not conversation.batched:
                    raise errors[0]
                raise MinibatchError("ChatCompletion forward", received, errors)
            texts = [placeholder if text is None else text for text in received]
        else:  # the usual forward: every item answered
            texts = [getattr(r, "text", r) for r in replies]
        ctx.conversation = conversation
        ctx.responses = tuple(texts)  # a tuple of str: the collector stops tracking it
        ctx.failed_items = frozenset(errors) if errors else _NO_FAILED_ITEMS
        ctx.backward_model = backward_model
        ctx.output_role = output_role
        if streamed is not None and streamed.output is not None:
            output = streamed.output[0]
            output.data = texts
        else:
            output = Variable(texts if conversation.batched else texts[0], output_role)
        if len(replies) > 1 or not getattr(replies[0], "complete", True):
            mark_incomplete_items(output, replies)
        if errors:
            mark_failed_items(output, errors)
            listed = "; ".join(f"item {i}: {describe_error(e)}" for i, e in sorted(errors.items()))
            warnings.warn(
                f"ChatCompletion forward: {len(errors)} of {conversation.size} items failed "
                f"and hold a placeholder ({listed})",
                ItemFailureWarning,
                stacklevel=2,
            )
        return output
