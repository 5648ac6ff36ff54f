"""Finding what to train: objects named ``module:attribute`` (or ``path/file.py:attribute``),
chains and chain factories, and the trainable Variables of a chain."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from afnio_langchain.autodiff import Variable
from afnio_langchain.train._evaluation import input_json_schema, is_bare_value_schema


class ChainLoadError(ValueError):
    """A chain (or metric) named on the command line cannot be loaded or trained."""


def import_object(spec: str) -> Any:
    """Import ``module:attribute`` (dotted attribute paths allowed) or
    ``path/to/file.py:attribute``. The current folder is importable.

    Raises:
        ChainLoadError: Malformed spec, module not found, or attribute missing; the
            message says which.

    Example:
        >>> from afnio_langchain.train import import_object
        >>> import_object("json:dumps").__name__
        'dumps'
    """
    if not isinstance(spec, str) or spec.count(":") < 1:
        raise ChainLoadError(f"expected module:attribute (or file.py:attribute), got {spec!r}")
    module_part, _, attr_path = spec.rpartition(":")
    if not module_part or not attr_path:
        raise ChainLoadError(f"expected module:attribute (or file.py:attribute), got {spec!r}")
    if module_part.endswith(".py"):
        file = Path(module_part)
        if not file.is_file():
            raise ChainLoadError(f"no such file {module_part!r} (from {spec!r})")
        name = f"_afnio_user_{abs(hash(file.resolve()))}"
        loader_spec = importlib.util.spec_from_file_location(name, file)
        if loader_spec is None or loader_spec.loader is None:
            raise ChainLoadError(f"cannot import {module_part!r}")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[name] = module
        folder = str(file.resolve().parent)  # its sibling modules import, as under python file.py
        if folder not in sys.path:
            sys.path.insert(0, folder)
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ChainLoadError(_import_failure(module_part, spec, exc)) from exc
    else:
        cwd = str(Path.cwd())
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise ChainLoadError(
                    f"cannot import module {module_part!r} (from {spec!r}): {exc}"
                ) from None
            raise ChainLoadError(_import_failure(module_part, spec, exc)) from exc
        except Exception as exc:
            raise ChainLoadError(_import_failure(module_part, spec, exc)) from exc
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ChainLoadError(f"{module_part!r} has no attribute {attr_path!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj


def _import_failure(module_part: str, spec: str, exc: BaseException) -> str:
    return _raised(f"importing {module_part!r} (from {spec!r})", exc)


def _raised(what: str, exc: BaseException) -> str:
    """One line: what raised what, and where (the last frame of its traceback)."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{what} raised {type(exc).__name__}: {exc}{where}"


def _is_runnable(obj: Any) -> bool:
    from langchain_core.runnables import Runnable

    return isinstance(obj, Runnable)


_NOT_A_MODEL = (str, int, float, bool, "str", "int", "float", "bool")
"""Annotations of a factory's one required parameter that say it is not the model."""


def model_parameter(factory: Any) -> str | None:
    """The parameter of a chain factory that takes the chat model: ``model`` when it
    has one, else its one required parameter (``def build(llm): ...``); None when it
    takes neither (it builds its own model).

    Example:
        >>> from afnio_langchain.train._loading import model_parameter
        >>> def build(llm, *, temperature=0.0): ...
        >>> def own(): ...
        >>> def named(model_name: str): ...
        >>> model_parameter(build), model_parameter(own), model_parameter(lambda model=None: 0)
        ('llm', None, 'model')
        >>> model_parameter(named) is None  # a name, not a chat model
        True
    """
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if "model" in parameters:
        return "model"
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    required = [p for p in parameters.values() if p.kind in kinds and p.default is p.empty]
    if len(required) != 1 or required[0].annotation in _NOT_A_MODEL:
        return None  # def build(model_name: str) takes a name, not a chat model
    return required[0].name


def load_chain(spec: str | Any, model: Any = None) -> Any:
    """The chain to train: a Runnable, or a factory (a function) returning one.

    A factory is called with the model (as its ``model`` parameter, or its one required
    parameter: see :func:`model_parameter`) when a model is given, else with no
    arguments.

    Raises:
        ChainLoadError: The spec cannot be imported, is neither a Runnable nor a
            factory, or a model was given for a ready-made chain.
    """
    obj = import_object(spec) if isinstance(spec, str) else spec
    name = spec if isinstance(spec, str) else getattr(spec, "__qualname__", type(spec).__name__)
    if _is_runnable(obj):
        if model is not None:
            raise ChainLoadError(
                f"{name} is a ready-made chain, so its model is already chosen: a forward "
                "model can only be given for a chain factory (a function taking the model)"
            )
        return obj
    if callable(obj):
        parameter = model_parameter(obj) if model is not None else None
        if model is not None and parameter is None:
            raise ChainLoadError(
                f"the chain factory {name} takes no model argument (a parameter named model, "
                "or one required parameter), but a forward model was given"
            )
        try:
            chain = obj(**{parameter: model}) if parameter is not None else obj()
        except Exception as exc:
            raise ChainLoadError(_raised(f"the chain factory {name}", exc)) from exc
        if not _is_runnable(chain):
            raise ChainLoadError(
                f"the chain factory {name} returned a {type(chain).__name__}, not a LangChain Runnable"
            )
        return chain
    raise ChainLoadError(
        f"{name} is a {type(obj).__name__}: expected a LangChain Runnable or a function returning one"
    )


def find_parameters(chain: Any) -> list[Variable]:
    """The trainable Variables of ``chain``, each once, in a stable order.

    Uses ``afnio_langchain.runnables._parameters`` (which walks sequences, parallels,
    assigns and bindings), else the chain's own ``parameters()`` method.

    Raises:
        ChainLoadError: Neither is available for this chain.
    """
    try:
        from afnio_langchain.runnables import parameters
    except ImportError:
        parameters = None
    if parameters is not None:
        return list(parameters(chain))
    method = getattr(chain, "parameters", None)
    if callable(method):
        return list(method())
    raise ChainLoadError(
        f"cannot find the trainable Variables of a {type(chain).__name__}: this version has no "
        "runnable walker (afnio_langchain.runnables._parameters); pass params=[...] explicitly"
    )


def make_chain_trainable(chain: Any, roles: Sequence[str] = ("system",)) -> Any:
    """Convert a plain LangChain chain (prompt | chat model | parser) into a trainable
    one with ``afnio_langchain.make_trainable`` (``roles``: the messages it trains).

    Raises:
        ChainLoadError: ``make_trainable`` is not available in this version, or the
            conversion failed (the message says why).
    """
    make_trainable = None
    for module_name in ("afnio_langchain", "afnio_langchain.runnables"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        make_trainable = getattr(module, "make_trainable", None)
        if make_trainable is not None:
            break
    if make_trainable is None:
        raise ChainLoadError(
            "the chain has no trainable Variables and make_trainable is not available in this "
            "version: build it from ChatCompletionRunnable steps with Variable(..., requires_grad=True)"
        )
    try:
        return make_trainable(chain, roles=tuple(roles))
    except (TypeError, ValueError) as exc:
        hint = " (on the command line: --roles system,user)" if "try roles=" in str(exc) else ""
        raise ChainLoadError(f"cannot make the chain trainable: {exc}{hint}") from exc


def trainable_chain(
    chain: Any, params: Sequence[Variable] | None = None, *, roles: Sequence[str] = ("system",)
) -> tuple[Any, list[Variable]]:
    """``(chain, params)`` ready for training: the given params, else those found in
    the chain, else those of ``make_trainable(chain, roles=roles)``.

    Raises:
        ChainLoadError: No trainable Variable anywhere.
    """
    if params is not None:
        found = list(params)
    else:
        found = find_parameters(chain)
        if not found:
            chain = make_chain_trainable(chain, roles)
            found = find_parameters(chain)
    if not found:
        raise ChainLoadError(
            "the chain has no trainable Variables (none with requires_grad=True)"
        )
    return chain, found


def param_keys(chain: Any, params: Sequence[Variable]) -> list[str] | None:
    """The stable names of ``params`` in ``chain`` (a ``make_trainable`` chain's
    ``"prompt_0.message_0"``...), or None when the chain does not name them all."""
    named = getattr(chain, "named_prompts", None)
    if not callable(named):
        return None
    by_id = {id(variable): key for key, variable in named().items()}
    keys = [by_id.get(id(p)) for p in params]
    return None if any(k is None for k in keys) else [k for k in keys if k is not None]


def chain_input_fields(chain: Any) -> list[str] | None:
    """The fields the chain's input must have (its templates' variables, from its
    LangChain input schema), or None when the schema does not say.

    Example:
        >>> from langchain_core.prompts import ChatPromptTemplate
        >>> from afnio_langchain.train._loading import chain_input_fields
        >>> chain_input_fields(ChatPromptTemplate.from_messages([("human", "{q} in {lang}")]))
        ['lang', 'q']
    """
    schema = input_json_schema(chain)
    if schema is None or is_bare_value_schema(schema):  # one value ("root"), not fields
        return None
    required = schema.get("required")
    if not isinstance(required, list) or not required or schema.get("type") != "object":
        return None
    return sorted(str(name) for name in required)


def count_llm_steps(chain: Any) -> int:
    """How many LLM calls the chain makes per example: its distinct differentiable LLM
    steps (``ChatCompletionRunnable``, agents count once), found in its LangChain graph;
    1 when none can be seen.

    Example:
        >>> from afnio_langchain import ChatCompletionRunnable, Variable
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> from afnio_langchain.train._loading import count_llm_steps
        >>> def step(text):
        ...     system = Variable(text, role="system prompt", requires_grad=True)
        ...     return ChatCompletionRunnable(model=ScriptedChatModel(forward="x"),
        ...                                   messages=[("system", system), ("user", "{q}")])
        >>> count_llm_steps(step("A.") | (lambda v: {"q": v}) | step("B."))
        2
    """
    return max(1, len(llm_steps(chain) or ()))


def llm_steps(chain: Any) -> list[Any] | None:
    """The distinct differentiable LLM steps of the chain (``ChatCompletionRunnable``,
    ``AgentRunnable``, ``TrainableAgent``) that its LangChain graph shows, the chain
    itself included; None when LangChain cannot draw the graph."""
    from afnio_langchain.agents import AgentRunnable, TrainableAgent
    from afnio_langchain.runnables import ChatCompletionRunnable

    kinds = (ChatCompletionRunnable, AgentRunnable, TrainableAgent)
    root = getattr(chain, "bound", chain) if hasattr(chain, "named_prompts") else chain
    try:
        nodes = [node.data for node in root.get_graph().nodes.values()]
    except Exception:  # a graph LangChain cannot draw
        return None
    found: dict[int, Any] = {}
    for step in [root, *nodes]:
        if isinstance(step, kinds):
            found.setdefault(id(step), step)
    return list(found.values())
