"""``TGD``: textual gradient descent. Each step asks an optimizer model for an improved
value of every parameter that has gradients, concurrently, checks each proposal and
writes the accepted ones."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from afnio_langchain._aio import gather_all
from afnio_langchain.autodiff import Data, Variable, placeholders, validate_data
from afnio_langchain.models import (
    ModelClient,
    StructuredOutputError,
    as_model_client,
    request_fields,
)
from afnio_langchain.optim import _prompts as prompts
from afnio_langchain.optim._optimizer import (
    REJECTED,
    SKIPPED,
    UPDATED,
    Optimizer,
    OptimizerStepError,
    ParamsT,
    ParamStep,
    StepReport,
)

DEFAULT_CONDENSE_THRESHOLD = 8
DEFAULT_CONDENSE_CHARS = 16_000
DEFAULT_MAX_PROPOSALS = 3


class TGD(Optimizer):
    """Textual gradient descent: rewrite each parameter from the feedback it received.

    One ``step()`` makes one optimizer-model call per parameter that has gradients,
    all parameters concurrently (parameters without gradients are skipped, with no
    call). The request shows the parameter's role, its current value, its gradients,
    with ``momentum`` the last ``momentum`` earlier values and the gradients each
    received, and the rules the new value must follow. The proposal comes back as a
    JSON object with one key and is parsed tolerantly.

    A proposal is rejected when it is empty, unchanged, changes the set of ``{name}``
    template fields of the value (or, for numbers and lists, has the wrong shape); the
    model is told why and asked again, up to ``max_proposals`` proposals. After that
    the parameter keeps its old value. :attr:`last_step` reports, per parameter,
    ``updated``, ``skipped`` or ``rejected`` with the reason. A ``str`` parameter
    stays a ``str``.

    When a parameter holds more than ``condense_threshold`` gradients (or more than
    ``condense_chars`` characters of them), one optimizer-model call first condenses
    them into a single feedback text, which the update request then shows.

    Every option can also be set per parameter group (``{"params": [...],
    "momentum": 3, "constraints": [...]}``), including ``model``.

    Args:
        params: Variables to optimize (``requires_grad=True``), or parameter-group dicts;
            frozen ones (``requires_grad=False``, as ``module.parameters()`` may hold) are
            kept unchanged, and at least one must require grad.
        model: The optimizer model: a LangChain chat model, an ``openai`` client (with
            ``model_name``), a ``dspy.LM`` or a :class:`~afnio_langchain.models.ModelClient`.
        momentum: How many earlier ``(value, gradients)`` pairs to show (0: none).
        constraints: Rules in plain language every new value must follow.
        model_name: The model name, needed with an ``openai`` client.
        model_client: afnio's spelling: the client, with ``model="NAME"`` naming the
            model (``TGD(params, model_client=AsyncOpenAI(), model="gpt-5")``).
        messages: afnio's custom optimizer prompts: not supported (TypeError); the
            prompts are the package's own.
        inputs: Values for afnio's custom prompts: not supported either.
        condense_threshold: Condense the gradients when there are more than this many.
        condense_chars: ... or when together they are longer than this (None: no limit).
        max_proposals: Proposals requested per parameter per step, at most.
        **completion_args: Passed to the optimizer model (``temperature``...).

    Raises:
        TypeError: No model, or not a model; a parameter is not a Variable; an option
            has the wrong type.
        ValueError: No parameters; no parameter requires grad; an option is out of
            range.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.autodiff import ChatCompletion
        >>> from afnio_langchain.optim import TGD
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> model = ScriptedChatModel(
        ...     forward="Owls are birds of prey that hunt mostly at night, and ...",
        ...     feedback="Ask for a single short sentence.",
        ...     optimizer="Answer questions about {topic} in one short sentence.")
        >>> system = Variable("Answer questions about {topic}.", role="system prompt",
        ...                   requires_grad=True)
        >>> optimizer = TGD([system], model=model, momentum=2,
        ...                 constraints=["Stay under 30 words."])
        >>> messages = [{"role": "system", "content": [system]},
        ...             {"role": "user", "content": [Variable("Tell me about owls.")]}]
        >>> answer = ChatCompletion.apply(model, messages, inputs={"topic": "owls"},
        ...                               backward_model=model)
        >>> answer.backward("Too long: one sentence is enough.")
        >>> optimizer.step()
        >>> system.data
        'Answer questions about {topic} in one short sentence.'
        >>> [(r.role, r.status) for r in optimizer.last_step]
        [('system prompt', 'updated')]
        >>> optimizer.zero_grad()
        >>> optimizer.step()  # no gradients: nothing to do, no model call
        >>> optimizer.last_step[0].reason
        'no gradients'
    """

    def __init__(
        self,
        params: ParamsT,
        model: Any = None,
        momentum: int = 0,
        constraints: Sequence[str | Variable] | str = (),
        *,
        model_name: str | None = None,
        model_client: Any = None,
        messages: Any = None,
        inputs: Any = None,
        condense_threshold: int = DEFAULT_CONDENSE_THRESHOLD,
        condense_chars: int | None = DEFAULT_CONDENSE_CHARS,
        max_proposals: int = DEFAULT_MAX_PROPOSALS,
        **completion_args: Any,
    ) -> None:
        model, model_name = _afnio_model_args(model, model_name, model_client)
        if messages is not None or inputs:
            raise TypeError(
                "TGD's optimizer prompts are the package's own (afnio_langchain.optim._prompts); "
                "custom messages=/inputs= are not supported: say what the new values must "
                "follow with constraints=[...] instead"
            )
        defaults = {
            "model": _resolve_model(model, model_name),
            "model_name": model_name,
            "momentum": momentum,
            "constraints": constraints,
            "condense_threshold": condense_threshold,
            "condense_chars": condense_chars,
            "max_proposals": max_proposals,
            "completion_args": dict(completion_args),
        }
        super().__init__(params, defaults)

    # -- options -------------------------------------------------------------------------
    def _check_group(self, group: dict[str, Any]) -> dict[str, Any]:
        group = dict(group)
        group["model"] = _resolve_model(group.get("model"), group.get("model_name"))
        group["momentum"] = _int_option(group, "momentum", minimum=0)
        group["constraints"] = _constraints(group.get("constraints", ()))
        group["condense_threshold"] = _int_option(group, "condense_threshold", minimum=1)
        if group.get("condense_chars") is not None:
            group["condense_chars"] = _int_option(group, "condense_chars", minimum=1)
        group["max_proposals"] = _int_option(group, "max_proposals", minimum=1)
        args = group.get("completion_args") or {}
        if not isinstance(args, Mapping):
            raise TypeError(f"completion_args must be a dict, got {type(args).__name__}")
        group["completion_args"] = dict(args)
        return group

    def _check_param_state(self, state: dict[str, Any], index: int) -> dict[str, Any]:
        buffer = state.get("momentum_buffer", [])
        if not isinstance(buffer, list):
            raise ValueError(f"the momentum_buffer of parameter {index} must be a list")
        for n, entry in enumerate(buffer):
            if (
                not isinstance(entry, Mapping)
                or "value" not in entry
                or not isinstance(entry.get("gradients"), list)
                or not all(isinstance(g, str) for g in entry["gradients"])
            ):
                raise ValueError(
                    f"entry {n} of the momentum_buffer of parameter {index} must be "
                    '{"value": ..., "gradients": [str, ...]}'
                )
            try:
                validate_data(entry["value"])
            except TypeError as exc:
                raise ValueError(f"momentum_buffer entry {n} of parameter {index}: {exc}") from None
        step = state.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"the step count of parameter {index} must be a non-negative int")
        return state

    # -- the step ------------------------------------------------------------------------
    async def _aupdate(self) -> StepReport:
        outcomes = await gather_all(
            [self._propose_named(index, group, p) for index, group, p in self.indexed_params()]
        )
        # All proposals are in (an error above leaves every parameter untouched): write.
        for (index, group, p), outcome in zip(list(self.indexed_params()), outcomes):
            result = outcome.result
            if result.status == SKIPPED:
                continue
            if result.status == UPDATED:
                p.data = result.new_value
            state = self.state.setdefault(index, {})
            state["step"] = state.get("step", 0) + 1
            if outcome.shown_feedback is not None and group["momentum"] > 0:
                buffer = state.setdefault("momentum_buffer", [])
                buffer.append(
                    {"value": result.old_value, "gradients": list(outcome.shown_feedback)}
                )
                del buffer[: max(0, len(buffer) - group["momentum"])]
        return StepReport(tuple(outcome.result for outcome in outcomes))

    async def _propose_named(self, index: int, group: dict[str, Any], param: Variable) -> _Outcome:
        """:meth:`_propose`, a failure naming the step and the parameter."""
        try:
            return await self._propose(index, group, param)
        except Exception as exc:
            step = self.state.get(index, {}).get("step", 0) + 1
            raise OptimizerStepError(type(self).__name__, step, index, param.role, exc) from exc

    async def _propose(self, index: int, group: dict[str, Any], param: Variable) -> _Outcome:
        old = param.data
        role = param.role or "text variable"
        texts = gradient_texts(param)

        def outcome(
            status: str, reason: str = "", new: Data | None = None, **extra: Any
        ) -> ParamStep:
            return ParamStep(
                index=index,
                role=param.role,
                status=status,
                reason=reason,
                old_value=old,
                new_value=old if new is None else new,
                gradients=len(texts),
                param=param,
                **extra,
            )

        if not param.requires_grad:  # frozen: unchanged even if a grad was set by hand
            return _Outcome(outcome(SKIPPED, "does not require grad"))
        if not texts:
            reason = "gradients are empty" if param.grad else "no gradients"
            return _Outcome(outcome(SKIPPED, reason))
        client: ModelClient = group["model"]
        args = group["completion_args"]
        step = self.state.get(index, {}).get("step", 0) + 1
        where = f"TGD step {step}, parameter {index} ({role!r})"
        value_text = encode_value(old)

        shown = texts
        condensed = needs_condensing(texts, group["condense_threshold"], group["condense_chars"])
        if condensed:
            try:
                shown = [
                    await condense_feedback(client, role, value_text, texts, where=where, **args)
                ]
            except StructuredOutputError as exc:
                return _Outcome(
                    outcome(REJECTED, f"could not condense {len(texts)} gradients: {exc}")
                )

        momentum = group["momentum"]
        buffer = self.state.get(index, {}).get("momentum_buffer", []) if momentum else []
        history = (
            [(encode_value(e["value"]), e["gradients"]) for e in buffer[-momentum:]]
            if momentum
            else []
        )
        rules = [*builtin_rules(old), *group["constraints"]]
        messages = prompts.tgd_messages(role, value_text, shown, history, rules)

        reason = ""
        proposals = 0
        for _ in range(group["max_proposals"]):
            proposals += 1
            try:
                fields = await request_fields(
                    client,
                    messages,
                    {prompts.PROPOSAL_KEY: prompts.PROPOSAL_FIELD},
                    purpose="optimizer",
                    where=where,
                    schema_name="proposal",
                    **args,
                )
            except StructuredOutputError as exc:
                reason = prompts.REASON_NO_JSON.format(error=exc)
                break
            proposal = fields[prompts.PROPOSAL_KEY]
            new, problem = check_proposal(old, proposal)
            if problem is None:
                return _Outcome(
                    outcome(UPDATED, new=new, proposals=proposals, condensed=condensed), shown
                )
            reason = problem
            messages = [*messages, *prompts.rejection_messages(proposal, problem)]
        return _Outcome(
            outcome(
                REJECTED,
                f"no acceptable proposal after {proposals} attempt(s): {reason}",
                proposals=proposals,
                condensed=condensed,
            ),
            shown,
        )


@dataclass(frozen=True)
class _Outcome:
    result: ParamStep
    shown_feedback: list[str] | None = None  # what the update request showed (momentum)


# -- gradients -------------------------------------------------------------------------


def gradient_texts(param: Variable) -> list[str]:
    """The non-empty feedback texts a parameter holds (a minibatch gradient gives one
    text per item)."""
    return [text for g in param.grad for text in (str(item).strip() for item in g.items()) if text]


def needs_condensing(texts: Sequence[str], threshold: int, max_chars: int | None) -> bool:
    """Whether ``texts`` are too many (more than ``threshold``) or too long to show."""
    return len(texts) > threshold or (max_chars is not None and sum(map(len, texts)) > max_chars)


async def condense_feedback(
    client: ModelClient,
    role: str,
    value: str,
    texts: Sequence[str],
    *,
    where: str,
    **completion_args: Any,
) -> str:
    """Merge many feedback texts on one variable into one, with one optimizer call.

    Raises:
        StructuredOutputError: No usable reply after the bounded re-asks.
    """
    fields = await request_fields(
        client,
        prompts.condense_messages(role, value, texts),
        {prompts.CONDENSED_KEY: prompts.CONDENSED_FIELD},
        purpose="optimizer",
        where=f"{where}, condensing {len(texts)} gradients",
        schema_name="condensed_feedback",
        **completion_args,
    )
    return fields[prompts.CONDENSED_KEY]


# -- values and proposals --------------------------------------------------------------


def encode_value(value: Data) -> str:
    """A parameter value as the text shown to the optimizer (lists as a JSON array)."""
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def builtin_rules(value: Data) -> list[str]:
    """The rules every proposal for ``value`` must follow, stated up front."""
    if isinstance(value, (int, float)):
        return [prompts.RULE_NUMBER]
    fields = placeholders(encode_value(value))
    rules = [
        prompts.RULE_KEEP_FIELDS.format(fields=prompts.fields_text(fields))
        if fields
        else prompts.RULE_NO_FIELDS
    ]
    if isinstance(value, list):
        rules.append(prompts.RULE_LIST)
    return rules


def check_proposal(old: Data, proposal: str) -> tuple[Data | None, str | None]:
    """Decode and check a proposed value against the current one.

    Returns:
        ``(new_value, None)`` when acceptable, else ``(None, reason)``.
    """
    text = proposal.strip()
    if not text:
        return None, prompts.REASON_EMPTY
    new: Data
    if isinstance(old, list):
        try:
            decoded = json.loads(text)
            if not isinstance(decoded, list):
                raise ValueError(f"got a JSON {type(decoded).__name__}")
            new = validate_data(decoded)
        except (ValueError, TypeError) as exc:
            return None, prompts.REASON_NOT_A_LIST.format(error=str(exc)[:200])
        if not new:
            return None, prompts.REASON_EMPTY
    elif isinstance(old, (int, float)):
        try:
            new = int(text) if isinstance(old, int) else float(text)
        except ValueError:
            try:
                new = float(text)
            except ValueError:
                return None, prompts.REASON_NOT_A_NUMBER.format(value=text[:100])
    else:
        new = text
    if new == old or (isinstance(old, str) and text == old.strip()):
        return None, prompts.REASON_UNCHANGED
    expected, got = placeholders(encode_value(old)), placeholders(encode_value(new))
    if set(expected) != set(got):
        return None, prompts.REASON_FIELDS.format(
            expected=prompts.fields_text(expected), got=prompts.fields_text(got)
        )
    return new, None


# -- options ---------------------------------------------------------------------------


def _afnio_model_args(model: Any, model_name: str | None, model_client: Any) -> tuple[Any, str | None]:
    """afnio's spelling, ``model_client=<client>, model="gpt-5"``, as ``(model, model_name)``."""
    if model_client is None:
        if isinstance(model, str):
            raise TypeError(
                "TGD model: expected a LangChain chat model, an openai client or a ModelClient; "
                f"model={model!r} only names one: pass the client too, afnio's spelling "
                "(model_client=AsyncOpenAI(), model=...)"
            )
        return model, model_name
    if model is not None and not isinstance(model, str):
        raise TypeError("pass the optimizer model once: model_client=<client> (with model='NAME') or model=<model>")
    if model_name is not None and model is not None and model_name != model:
        raise TypeError(f"two model names given: model={model!r} and model_name={model_name!r}")
    return model_client, model_name or model


def _resolve_model(model: Any, model_name: str | None) -> ModelClient:
    if model is None:
        raise TypeError(
            "TGD needs a model to write proposals: pass model=<a LangChain chat model, an "
            "openai client with model_name=..., a dspy.LM or a ModelClient>"
        )
    if isinstance(model, ModelClient) and callable(getattr(model, "acomplete", None)):
        return model
    try:
        return as_model_client(model, model_name)
    except TypeError as exc:
        raise TypeError(f"TGD model: {exc}") from None


def _int_option(group: Mapping[str, Any], key: str, minimum: int) -> int:
    value = group.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"TGD option {key} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"TGD option {key} must be >= {minimum}, got {value}")
    return value


def _constraints(constraints: Any) -> list[str]:
    if isinstance(constraints, (str, Variable)):
        constraints = [constraints]
    if constraints is None:
        return []
    if isinstance(constraints, Mapping) or not isinstance(constraints, Sequence):
        raise TypeError(
            f"constraints must be a list of str (or Variables), got {type(constraints).__name__}"
        )
    out = []
    for i, c in enumerate(constraints):
        if isinstance(c, Variable):
            c = str(c.data)
        if not isinstance(c, str):
            raise TypeError(f"constraint {i} must be a str (or a Variable), got {type(c).__name__}")
        if c.strip():
            out.append(c.strip())
    return out
