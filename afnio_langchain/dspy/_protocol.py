"""Gradients and proposals from a DSPy LM, asked for in the protocol DSPy LMs answer.

The package asks its backward and optimizer models for a JSON object with fixed
string fields (``var_1`` for a gradient, ``improved_value`` for a proposal). A DSPy LM
is prompted, and often tuned, for DSPy's adapter format instead (``DummyLM`` answers
nothing else), and a reply in that format is not a JSON object. So when a ``dspy.LM``
writes the teleprompter's gradients or proposals, each request becomes a DSPy
signature (the request's system text as its instructions, its conversation as one
input field, one output field per requested key), formatted by DSPy's adapter
(``dspy.settings.adapter``, the ``ChatAdapter`` by default), sent through the package's
client of that LM (usage counted by purpose, retries, DSPy's cache off), and parsed
back by the same adapter. The reply counts only when the adapter reads exactly the
requested fields from it; anything else (another signature's fields, bare text, a
cut-off reply) raises :class:`~afnio_langchain.models.StructuredOutputError` and is
never taken as a gradient or an instruction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from afnio_langchain.dspy._compat import require_dspy

dspy = require_dspy("afnio_langchain.dspy._protocol")

from afnio_langchain._aio import run_sync
from afnio_langchain.dspy import _prompts as prompts
from afnio_langchain.dspy._lm import bridged_client
from afnio_langchain.models import (
    Completion,
    JsonSchema,
    Message,
    ModelClient,
    StructuredOutputError,
    as_model_client,
    json_instruction,
)


class AdapterProtocolClient:
    """A ``dspy.LM`` as a model client whose structured replies go through DSPy's adapter.

    Requests with a JSON schema (gradients, proposals) are asked for in the adapter's
    format and parsed by it (see the module docstring); requests without one (plain
    completions) pass through unchanged. One model call per request: a reply the
    adapter cannot parse into exactly the requested fields raises.

    Args:
        lm: The DSPy language model.
        adapter: The DSPy adapter (default: ``dspy.settings.adapter`` at call time, else
            a ``ChatAdapter``).

    Example:
        >>> import dspy
        >>> from dspy.utils import DummyLM
        >>> from afnio_langchain.dspy._protocol import AdapterProtocolClient
        >>> from afnio_langchain.models import StructuredOutputError, request_fields
        >>> from afnio_langchain._aio import run_sync
        >>> lm = DummyLM([{"var_1": "Name the capital city."}, {"reasoning": "...", "answer": "x"}])
        >>> client = AdapterProtocolClient(lm)
        >>> ask = [{"role": "user", "content": "How should the instructions change?"}]
        >>> run_sync(lambda: request_fields(client, ask, {"var_1": "feedback"},
        ...                                 purpose="backward", where="example"))
        {'var_1': 'Name the capital city.'}
        >>> try:  # a reply with other fields is not a gradient
        ...     run_sync(lambda: request_fields(client, ask, {"var_1": "feedback"},
        ...                                     purpose="backward", where="example"))
        ... except StructuredOutputError as exc:
        ...     print("refused")
        refused
    """

    def __init__(self, lm: Any, adapter: Any = None) -> None:
        if not isinstance(lm, dspy.BaseLM):
            raise TypeError(f"expected a dspy.LM (dspy.BaseLM), got {type(lm).__name__}")
        self.lm = lm
        self.adapter = adapter
        self.client = as_model_client(lm)
        self.model_name = self.client.model_name

    def __repr__(self) -> str:
        return f"AdapterProtocolClient(model_name={self.model_name!r})"

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        purpose: str = "forward",
        json_schema: JsonSchema | None = None,
        **params: Any,
    ) -> Completion:
        if json_schema is None:
            return await self.client.acomplete(messages, purpose=purpose, **params)
        signature = request_signature(messages, json_schema)
        adapter = self.adapter or dspy.settings.adapter or dspy.ChatAdapter()
        formatted = adapter.format(signature, [], {prompts.REQUEST_FIELD: request_text(messages, json_schema)})
        reply = await self.client.acomplete(_plain(formatted), purpose=purpose, **params)
        try:
            fields = adapter.parse(signature, reply.text)
        except Exception as exc:  # AdapterParseError, or a custom adapter's own error
            raise StructuredOutputError(
                f"{type(adapter).__name__} {purpose} request to {self.model_name}",
                f"the reply does not hold the fields {list(signature.output_fields)}: "
                f"{type(exc).__name__}",
                [reply.text],
            ) from None
        # The reply's marks go with the fields: a cut-off or refused reply whose text
        # the adapter still parsed is then refused by the acceptance rule, as elsewhere.
        return Completion(
            json.dumps(fields, ensure_ascii=False),
            reply.model,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
            raw=reply.raw,
            cached_input_tokens=reply.cached_input_tokens,
            from_cache=reply.from_cache,
            finish_reason=reply.finish_reason,
            unanswered=reply.unanswered,
        )

    def complete(self, messages: Sequence[Message], **kwargs: Any) -> Completion:
        """Synchronous :meth:`acomplete`."""
        return run_sync(lambda: self.acomplete(messages, **kwargs))


def feedback_client(model: Any) -> ModelClient:
    """The client that writes the teleprompter's gradients or proposals with ``model``:
    an :class:`AdapterProtocolClient` for a ``dspy.LM`` (also one wrapped as a model
    client), else the model's own client (the package's JSON protocol). A ``dspy.LM``
    made by :func:`~afnio_langchain.dspy.as_dspy_lm` is a package model client behind
    DSPy's API: that client is asked directly, in the JSON protocol."""
    if isinstance(model, AdapterProtocolClient):
        return model
    client = as_model_client(model)
    lm = model if isinstance(model, dspy.BaseLM) else getattr(client, "lm", None)
    if not isinstance(lm, dspy.BaseLM):
        return client
    bridged = bridged_client(lm)  # an as_dspy_lm LM: ask its own client, in JSON
    return bridged if bridged is not None else AdapterProtocolClient(lm)


def request_signature(messages: Sequence[Message], json_schema: JsonSchema) -> Any:
    """The DSPy signature of one structured request: the system text as instructions,
    one input field, and one string output field per property of the schema."""
    properties = json_schema.schema.get("properties", {})
    if not properties:
        raise ValueError(f"the JSON schema {json_schema.name!r} has no properties to ask for")
    fields: dict[str, Any] = {
        prompts.REQUEST_FIELD: (str, dspy.InputField(desc=prompts.REQUEST_DESCRIPTION)),
    }
    for name, spec in properties.items():
        fields[name] = (str, dspy.OutputField(desc=str(spec.get("description", name))))
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return dspy.make_signature(fields, system or None, signature_name="AfnioRequest")


def request_text(messages: Sequence[Message], json_schema: JsonSchema) -> str:
    """The request's conversation (all but its system text) as one input value, without
    the package's JSON instruction (the adapter states its own format)."""
    keys = list(json_schema.schema.get("properties", {}))
    instruction = json_instruction(keys)
    turns = [m for m in messages if m["role"] != "system"]
    texts = [m["content"].replace(instruction, "").strip() for m in turns]
    if len(turns) == 1:
        return texts[0]
    return "\n\n".join(f"[{m['role']}]\n{text}" for m, text in zip(turns, texts))


def _plain(messages: Sequence[Any]) -> list[Message]:
    return [{"role": m["role"], "content": str(m["content"])} for m in messages]


__all__ = ["AdapterProtocolClient", "feedback_client", "request_signature", "request_text"]
