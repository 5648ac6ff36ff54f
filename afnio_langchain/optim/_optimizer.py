"""``Optimizer``: the base class of textual optimizers (PyTorch/afnio style), and the
per-step report every step leaves in ``optimizer.last_step``."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError, field_validator

from afnio_langchain._aio import run_sync
from afnio_langchain.autodiff import Data, Variable, describe_error, enable_grad, validate_data
from afnio_langchain.models import redact_value

ParamsT = Union[Iterable[Variable], Iterable[Mapping[str, Any]]]
"""What an optimizer takes: Variables, or dicts defining parameter groups."""

STATE_DICT_FORMAT = "afnio_langchain.optim"
STATE_DICT_VERSION = 1

UPDATED = "updated"
SKIPPED = "skipped"
REJECTED = "rejected"


class OptimizerStepError(RuntimeError):
    """A step could not be made for one parameter (its model call failed after the
    client's retries). Nothing was written: every parameter keeps its value and state.

    The original error is the ``__cause__``.

    Attributes:
        step: The step that failed, from 1 (the parameter's count of steps, this one
            included).
        index: The parameter's index in the optimizer.
        role: The parameter's role.
    """

    def __init__(self, optimizer: str, step: int, index: int, role: str, cause: BaseException):
        self.step = step
        self.index = index
        self.role = role
        super().__init__(
            f"{optimizer} step {step}, parameter {index} ({role!r}) failed: "
            f"{describe_error(cause, limit=1000)}"
        )


class _SavedGroup(BaseModel):
    """A parameter group in a state dict: which parameters it holds. Options a file
    holds besides (older versions saved them) are ignored: they are configuration."""

    model_config = ConfigDict(extra="ignore")
    params: list[StrictInt]


class _SavedValue(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: StrictStr | None = None
    data: Any

    @field_validator("data")
    @classmethod
    def _is_data(cls, value: Any) -> Data:
        try:
            return validate_data(value)
        except TypeError as exc:  # pydantic reports a ValueError as a validation error
            raise ValueError(str(exc)) from None


class _SavedState(BaseModel):
    """The JSON schema of :meth:`Optimizer.state_dict`."""

    model_config = ConfigDict(extra="ignore")
    format: Literal["afnio_langchain.optim"]
    version: Literal[1]
    optimizer: StrictStr
    param_groups: list[_SavedGroup]
    state: dict[str, dict[str, Any]] = {}
    values: list[_SavedValue]

    @field_validator("state")
    @classmethod
    def _keys_are_indices(cls, state: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for key in state:
            if not key.lstrip("-").isdigit():
                raise ValueError(f"the state has a non-index key {key!r}")
        return state


@dataclass(frozen=True)
class ParamStep:
    """What one step did to one parameter.

    Attributes:
        index: The parameter's position in the optimizer (over all groups, in order).
        role: The parameter's role.
        status: ``"updated"`` (a new value was written), ``"skipped"`` (no gradients,
            no model call) or ``"rejected"`` (no acceptable proposal: the old value
            was kept).
        reason: Why it was skipped or rejected (empty when updated).
        old_value: The value before the step.
        new_value: The value after the step (equal to ``old_value`` unless updated).
        proposals: How many proposals were requested.
        gradients: How many feedback texts the parameter held.
        condensed: Whether those were condensed into one before the update.
        param: The parameter itself (not compared, not serialised).

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.optim import TGD
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> prompt = Variable("Be brief.", role="system prompt", requires_grad=True)
        >>> optimizer = TGD([prompt], model=ScriptedChatModel(optimizer="Be brief and polite."))
        >>> prompt.grad = [Variable("Sounds rude.", role="feedback to system prompt")]
        >>> optimizer.step()
        >>> step = optimizer.last_step[0]
        >>> step.status, step.old_value, step.new_value, step.gradients
        ('updated', 'Be brief.', 'Be brief and polite.', 1)
        >>> step.to_dict()["proposals"]
        1
    """

    index: int
    role: str
    status: str
    reason: str = ""
    old_value: Data = ""
    new_value: Data = ""
    proposals: int = 0
    gradients: int = 0
    condensed: bool = False
    param: Variable | None = field(default=None, compare=False, repr=False)

    @property
    def updated(self) -> bool:
        return self.status == UPDATED

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without the parameter object)."""
        out = asdict(self)
        out.pop("param")
        return out


@dataclass(frozen=True)
class StepReport:
    """The per-parameter results of one optimizer step, in parameter order.

    Iterating, ``len`` and indexing go over :class:`ParamStep` results.

    Example:
        >>> from afnio_langchain.optim import ParamStep, StepReport
        >>> report = StepReport((ParamStep(0, "system prompt", "updated", old_value="a",
        ...                                new_value="b"),
        ...                      ParamStep(1, "examples", "skipped", reason="no gradients")))
        >>> [r.role for r in report.updated], len(report.skipped), report.any_updated
        (['system prompt'], 1, True)
    """

    results: tuple[ParamStep, ...] = ()

    @property
    def updated(self) -> list[ParamStep]:
        return [r for r in self.results if r.status == UPDATED]

    @property
    def rejected(self) -> list[ParamStep]:
        return [r for r in self.results if r.status == REJECTED]

    @property
    def skipped(self) -> list[ParamStep]:
        return [r for r in self.results if r.status == SKIPPED]

    @property
    def any_updated(self) -> bool:
        return any(r.status == UPDATED for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for training logs)."""
        return {"results": [r.to_dict() for r in self.results]}

    def __iter__(self) -> Iterator[ParamStep]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> ParamStep:
        return self.results[index]


class Optimizer:
    """Base class of optimizers: parameter groups, per-parameter state, gradient
    clearing, the ``step`` protocol and JSON state dicts.

    Parameters are given as a list of Variables, or as a list of dicts defining
    parameter groups (``{"params": [...], **options}``); options a group omits come
    from ``defaults``. Give parameters in a deterministic order (a list, not a set):
    state is keyed by each parameter's index in that order, so that it can be saved
    as JSON and loaded into a new optimizer over the same parameters.

    A subclass implements ``async def _aupdate(self) -> StepReport``, which reads
    ``param.grad``, writes ``param.data`` and keeps what it needs in
    ``self.state[index]`` (JSON-ready values only). It may override
    ``_check_group`` to validate and normalise a group's options.

    Args:
        params: Variables, or dicts defining parameter groups. Frozen ones
            (``requires_grad=False``) are accepted as in PyTorch; at least one must
            require grad.
        defaults: Default options for parameter groups.

    Raises:
        TypeError: ``params`` is not a list of Variables or of group dicts.
        ValueError: The list is empty, no parameter requires grad, or a parameter is
            not a leaf or appears twice.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.optim import Optimizer, ParamStep, StepReport
        >>> class Shout(Optimizer):
        ...     async def _aupdate(self):
        ...         results = []
        ...         for index, group, p in self.indexed_params():
        ...             old = p.data
        ...             if p.grad:
        ...                 p.data = old.upper() + group["suffix"]
        ...                 self.state.setdefault(index, {})["steps"] = 1
        ...             status = "updated" if p.grad else "skipped"
        ...             results.append(ParamStep(index, p.role, status, old_value=old,
        ...                                      new_value=p.data, param=p))
        ...         return StepReport(tuple(results))
        >>> a = Variable("hi", role="greeting", requires_grad=True)
        >>> b = Variable("bye", role="farewell", requires_grad=True)
        >>> opt = Shout([{"params": [a]}, {"params": [b], "suffix": "?"}],
        ...            defaults={"suffix": "!"})
        >>> [g["suffix"] for g in opt.param_groups]
        ['!', '?']
        >>> a.grad = [Variable("louder", role="feedback to greeting")]
        >>> opt.step(closure=lambda: "loss")
        'loss'
        >>> a.data, b.data, opt.last_step[1].status
        ('HI!', 'bye', 'skipped')
        >>> opt.zero_grad()
        >>> a.grad
        []
        >>> import json
        >>> saved = json.loads(json.dumps(opt.state_dict()))
        >>> saved["state"], saved["values"][0]["data"]
        ({'0': {'steps': 1}}, 'HI!')
    """

    def __init__(self, params: ParamsT, defaults: Mapping[str, Any]) -> None:
        self.defaults: dict[str, Any] = dict(defaults)
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self.last_step: StepReport | None = None
        for group in _as_groups(params):
            self.add_param_group(group)
        # Frozen parameters are accepted, as in afnio and PyTorch (a module's
        # parameters() may hold some), but an optimizer with nothing to train is a
        # mistake worth naming.
        if not any(p.requires_grad for p in self.params):
            first = self.params[0]
            others = " and neither do the others" if len(self.params) > 1 else ""
            raise ValueError(
                f"no parameter requires grad: parameter 0 ({first.role or 'no role'}) does not "
                f"require grad{others}; create the ones to optimize with requires_grad=True "
                "or call .requires_grad_()"
            )

    # -- parameter groups ---------------------------------------------------------------
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own options (missing ones from defaults).

        New parameters get the next indices, so existing state keeps its keys.

        Raises:
            TypeError: The group is not a dict with ``"params"``, or holds a non-Variable.
            ValueError: A parameter is not a leaf, or is already optimized by this
                optimizer; or the group is empty. Parameters that do not require grad
                (frozen) are accepted; steps leave them unchanged.
        """
        if not isinstance(param_group, Mapping):
            raise TypeError(
                f"a parameter group must be a dict with a 'params' key, got "
                f"{type(param_group).__name__}"
            )
        if "params" not in param_group:
            raise ValueError("a parameter group needs a 'params' key (a list of Variables)")
        group = dict(param_group)
        params = _param_list(group["params"], where="parameter group 'params'")
        if not params:
            raise ValueError("a parameter group has an empty 'params' list")
        seen: set[int] = set()
        for i, p in enumerate(params):
            _check_param(p, i)
            if id(p) in seen:
                raise ValueError(
                    f"parameter {i} ({p.role or 'no role'}) appears twice in one parameter group"
                )
            seen.add(id(p))
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if existing & seen:
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = params
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.param_groups.append(self._check_group(group))

    def _check_group(self, group: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise a group's options (override in subclasses)."""
        return group

    @property
    def params(self) -> list[Variable]:
        """Every parameter, in index order."""
        return [p for g in self.param_groups for p in g["params"]]

    def indexed_params(self) -> Iterator[tuple[int, dict[str, Any], Variable]]:
        """``(index, group, param)`` for every parameter, in index order."""
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                yield index, group, p
                index += 1

    # -- gradients -----------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Clear the gradients of every parameter (PyTorch spelling of :meth:`clear_grad`)."""
        for p in self.params:
            p.grad = []

    def clear_grad(self) -> None:
        """Clear the gradients of every parameter."""
        self.zero_grad()

    # -- stepping ------------------------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter from its gradients; return the closure's loss.

        ``closure`` (optional) re-runs the forward and backward passes and returns the
        loss; it is called first, with grad mode enabled. Works inside a running event
        loop too. The per-parameter results are kept in :attr:`last_step`.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
                if inspect.isawaitable(loss):
                    pending = loss
                    loss = run_sync(lambda: _awaited(pending))
        self.last_step = run_sync(self._aupdate)
        return loss

    async def astep(self, closure: Callable[[], Any] | None = None) -> Any:
        """Async :meth:`step`; ``closure`` may be sync or async."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
                if inspect.isawaitable(loss):
                    loss = await loss
        self.last_step = await self._aupdate()
        return loss

    async def _aupdate(self) -> StepReport:
        """Update the parameters from their gradients (implemented by subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _aupdate")

    # -- state dicts ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state as a JSON-ready dict: data, never configuration.

        Holds a format version, the optimizer's class name, the parameter groups (the
        indices of their parameters only: options, model objects, request arguments
        and rules stay with the code that builds the optimizer), the per-parameter
        state keyed by index (as strings: momentum history, step counts), and every
        parameter's current role and value.
        """
        groups = []
        index = 0
        for group in self.param_groups:
            groups.append({"params": list(range(index, index + len(group["params"])))})
            index += len(group["params"])
        return {
            "format": STATE_DICT_FORMAT,
            "version": STATE_DICT_VERSION,
            "optimizer": type(self).__name__,
            "param_groups": groups,
            "state": {str(k): copy.deepcopy(v) for k, v in sorted(self.state.items())},
            "values": [{"role": p.role, "data": copy.deepcopy(p.data)} for p in self.params],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the per-parameter state and the parameter values from
        :meth:`state_dict` (also after a ``json.dumps``/``json.loads`` round trip).

        Group options are never restored, even from a file that holds them: the
        optimizer keeps the options (model, request arguments, constraints, limits)
        it was built with. Everything is validated before anything changes.

        Raises:
            TypeError: ``state_dict`` is not a dict.
            ValueError: It is not an optimizer state dict, has an unknown version, comes
                from another optimizer class, or does not match this optimizer's groups
                and parameters; the message says what differs.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        if state_dict.get("format") != STATE_DICT_FORMAT or "version" not in state_dict:
            raise ValueError(
                "not an optimizer state dict: expected a dict from Optimizer.state_dict() "
                f"with format {STATE_DICT_FORMAT!r} and a version"
            )
        if state_dict["version"] != STATE_DICT_VERSION:
            raise ValueError(
                f"unsupported optimizer state dict version {state_dict['version']!r} "
                f"(this version reads version {STATE_DICT_VERSION})"
            )
        try:
            saved = _SavedState.model_validate(dict(state_dict))
        except ValidationError as exc:
            raise ValueError(f"malformed optimizer state dict: {_first_error(exc)}") from None
        if saved.optimizer != type(self).__name__:
            raise ValueError(
                f"the state dict was saved from optimizer {saved.optimizer!r}, "
                f"not {type(self).__name__!r}"
            )
        id_map = self._index_map(saved.param_groups)  # saved index -> current index
        params = self.params
        if len(saved.values) != len(params):
            raise ValueError(
                f"the state dict holds {len(saved.values)} parameter value(s); this optimizer "
                f"has {len(params)} parameter(s)"
            )
        inverse = {current: old for old, current in id_map.items()}
        new_values: list[Data] = []
        for current, p in enumerate(params):
            entry = saved.values[inverse[current]] if inverse[current] < len(saved.values) else None
            if entry is None:
                raise ValueError(f"the state dict has no value {inverse[current]}")
            if entry.role is not None and entry.role != p.role:
                raise ValueError(
                    f"parameter {current} has role {p.role!r} but the state dict's value "
                    f"{inverse[current]} has role {entry.role!r}: the parameters are not the "
                    "ones it was saved from (or not in the same order)"
                )
            new_values.append(entry.data)
        new_state: dict[int, dict[str, Any]] = {}
        for key, entry in saved.state.items():
            if int(key) not in id_map:
                raise ValueError(f"the state dict has state for unknown parameter index {key}")
            current = id_map[int(key)]
            new_state[current] = self._check_param_state(copy.deepcopy(entry), current)

        # Everything checked: apply.
        self.state = new_state
        for p, value in zip(params, new_values):
            p.data = value

    def _index_map(self, saved_groups: list[_SavedGroup]) -> dict[int, int]:
        """Saved parameter index -> current index, checking the groups match."""
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"the state dict has {len(saved_groups)} parameter group(s); this optimizer "
                f"has {len(self.param_groups)}"
            )
        id_map: dict[int, int] = {}
        for n, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved.params) != len(group["params"]):
                raise ValueError(
                    f"parameter group {n} has {len(saved.params)} parameter(s) in the state "
                    f"dict and {len(group['params'])} in this optimizer"
                )
            for saved_index in saved.params:
                if saved_index in id_map:
                    raise ValueError(f"parameter index {saved_index} appears twice in the state dict")
                id_map[saved_index] = len(id_map)
        return id_map

    def _check_param_state(self, state: dict[str, Any], index: int) -> dict[str, Any]:
        """Validate one parameter's loaded state (override in subclasses)."""
        return state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(group):
                if key != "params":  # masked before it is cut: headers may hold keys
                    shown = repr(redact_value({key: group[key]})[key])
                    lines.append(f"    {key}: {shown[:200]}")
        lines.append(")")
        return "\n".join(lines)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``field.path: message``."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _param_list(params: Any, where: str) -> list[Any]:
    if isinstance(params, Variable):
        return [params]
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise TypeError(
            f"{where} must be a Variable or a list of Variables, got {type(params).__name__}"
        )
    if isinstance(params, (set, frozenset)):
        raise TypeError(
            f"{where} must be in a deterministic order (a list), not a set: optimizer state "
            "is keyed by parameter order"
        )
    return list(params)


def _as_groups(params: Any) -> list[Mapping[str, Any]]:
    if isinstance(params, Variable):
        raise TypeError(
            "params must be a list of Variables or of dicts, got a single Variable: pass [variable]"
        )
    if isinstance(params, Mapping):
        raise TypeError("params must be a list of Variables or of dicts, got a dict: pass [group]")
    items = _param_list(params, where="params")
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(item, Mapping) for item in items):
        return items
    if any(isinstance(item, Mapping) for item in items):
        raise TypeError("params must be all Variables or all parameter-group dicts, not a mix")
    return [{"params": items}]


def _check_param(p: Any, i: int) -> None:
    if not isinstance(p, Variable):
        raise TypeError(
            f"optimizer can only optimize Variables, but parameter {i} is a {type(p).__name__}"
        )
    if not p.is_leaf:
        raise ValueError(
            f"can't optimize a non-leaf Variable (parameter {i}, {p.role or 'no role'})"
        )
