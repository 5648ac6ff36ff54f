"""``Module``: afnio's (and PyTorch's) way of writing a program as a class holding
Parameters and sub-modules, which is also a LangChain Runnable."""

from __future__ import annotations

import inspect
from collections import OrderedDict, namedtuple
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from langchain_core.runnables import Runnable, RunnableConfig

from afnio_langchain._aio import run_in_thread
from afnio_langchain._signed_calls import arun_method, run_method
from afnio_langchain.autodiff import Variable
from afnio_langchain.cognitive._parameter import Parameter

T = TypeVar("T", bound="Module")

# What a Module registers besides parameters, buffers and sub-modules (afnio's kinds):
# the last multi-turn messages, model clients, completion arguments and functions an
# op module was called with. They are attributes like any other; they are not state.
_OTHER_KINDS = ("_chats", "_models", "_completion_configs", "_functions")


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What :meth:`Module.load_state_dict` did not match."""

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


class Module(Runnable[Any, Any]):
    """Base class of programs made of Parameters, Variables and sub-modules.

    Assign a :class:`Parameter` or a sub-module as an attribute and it is registered:
    ``parameters()``, ``named_parameters()``, ``modules()``, ``state_dict()`` find it,
    recursively. Call the module to run ``forward``. ``train()``/``eval()`` set
    ``training`` on the whole tree. For :class:`~afnio_langchain.trainer.Trainer`, a
    module defines ``training_step``, ``validation_step``, ``test_step`` and
    ``configure_optimizers``, as in afnio (and PyTorch Lightning).

    A Module is also a LangChain ``Runnable``: ``invoke``/``ainvoke``/``batch`` call
    ``forward`` (a dict whose keys all name ``forward``'s parameters is passed as
    keyword arguments, anything else as the single argument), trace a run named after
    the class, and compose with ``|``. ``afnio_langchain.parameters(chain)`` finds a
    module's parameters inside any chain.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain import cognitive as cog
        >>> class Greeter(cog.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.greeting = cog.Parameter("Hello", role="greeting")
        ...         self.mark = Variable("!", role="punctuation")  # a plain attribute
        ...     def forward(self, name):
        ...         return self.greeting + Variable(f", {name}") + self.mark
        >>> greeter = Greeter()
        >>> [name for name, _ in greeter.named_parameters()]
        ['greeting']
        >>> greeter("Ada").data
        'Hello, Ada!'
        >>> greeter.invoke({"name": "Bob"}).data, greeter.invoke("Cy").data
        ('Hello, Bob!', 'Hello, Cy!')
        >>> greeter.eval().training
        False
    """

    training: bool
    automatic_optimization: bool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() of Module takes no arguments")
        set_ = object.__setattr__
        set_(self, "training", True)
        set_(self, "automatic_optimization", True)
        set_(self, "_optimizers", None)
        set_(self, "_parameters", OrderedDict())
        set_(self, "_buffers", OrderedDict())
        set_(self, "_non_persistent_buffers_set", set())
        set_(self, "_modules", OrderedDict())
        for kind in _OTHER_KINDS:
            set_(self, kind, OrderedDict())

    # -- the program ---------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The computation; override it in subclasses."""
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required "forward" function.')

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    # -- registration --------------------------------------------------------------------
    def _registries(self) -> dict[str, Any]:
        try:
            return {"_parameters": self.__dict__["_parameters"]}
        except KeyError:
            raise AttributeError(
                f"cannot assign to {type(self).__name__} before Module.__init__() call"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._registries()  # raises before __init__
        d = self.__dict__

        def drop_from_others(keep: str) -> None:
            # As PyTorch: the entry of the kind assigned stays, so a replaced parameter
            # or module keeps its place in parameters() (the optimizer's indices).
            d.pop(name, None)
            for kind in ("_parameters", "_buffers", "_modules", *_OTHER_KINDS):
                if kind != keep:
                    d[kind].pop(name, None)
            d["_non_persistent_buffers_set"].discard(name)

        if isinstance(value, Parameter):
            drop_from_others("_parameters")
            self.register_parameter(name, value)
        elif isinstance(value, Module):
            drop_from_others("_modules")
            d["_modules"][name] = value
        elif name in d["_parameters"]:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} (a Parameter or None)")
            d["_parameters"][name] = None
        elif name in d["_modules"]:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as child module {name!r} (a Module or None)")
            d["_modules"][name] = None
        elif name in d["_buffers"]:
            if value is not None and not isinstance(value, Variable):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} (a Variable or None)")
            d["_buffers"][name] = value
        else:
            for kind in _OTHER_KINDS:
                if name in d[kind]:
                    d[kind][name] = value
                    return
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for kind in ("_parameters", "_buffers", "_modules", *_OTHER_KINDS):
            registry = d.get(kind)
            if registry is not None and name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        for kind in ("_parameters", "_buffers", "_modules", *_OTHER_KINDS):
            if name in self.__dict__.get(kind, {}):
                del self.__dict__[kind][name]
                self._non_persistent_buffers_set.discard(name)
                return
        object.__delattr__(self, name)

    def _check_name(self, name: str, what: str, kind: str) -> None:
        """Refuse a bad name, or one already taken by anything but a ``kind`` entry.

        As in afnio and PyTorch (``hasattr(self, name) and name not in registry``):
        registering the same kind again under a name replaces the entry; a name held by
        a plain attribute, a class attribute or another kind raises ``KeyError``.
        """
        self._registries()
        if not isinstance(name, str):
            raise TypeError(f"{what} name should be a str, got {type(name).__name__}")
        if not name or "." in name:
            raise KeyError(f"{what} name must be a non-empty str without '.', got {name!r}")
        if name in self.__dict__[kind]:
            return
        d = self.__dict__
        # hasattr(self, name) without running the properties of LangChain's Runnable.
        if name in d or hasattr(type(self), name) or any(
            name in d[other] for other in ("_parameters", "_buffers", "_modules", *_OTHER_KINDS)
        ):
            raise KeyError(f"attribute {name!r} already exists")

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Add a parameter (or a None placeholder) under ``name``."""
        self._check_name(name, "parameter", "_parameters")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign {type(param).__name__} as parameter {name!r} (a Parameter or None)")
        self._parameters[name] = param

    def register_buffer(self, name: str, variable: Variable | None, persistent: bool = True) -> None:
        """Add a Variable that is state but not a parameter (kept in ``state_dict`` when
        ``persistent``)."""
        self._check_name(name, "buffer", "_buffers")
        if variable is not None and not isinstance(variable, Variable):
            raise TypeError(f"cannot assign {type(variable).__name__} as buffer {name!r} (a Variable or None)")
        self._buffers[name] = variable
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def register_module(self, name: str, module: Module | None) -> None:
        """Add a sub-module under ``name``."""
        self._check_name(name, "module", "_modules")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module")
        self._modules[name] = module

    add_module = register_module

    def _register_other(self, kind: str, name: str, value: Any) -> None:
        self._check_name(name, kind.strip("_").rstrip("s"), kind)
        self.__dict__[kind][name] = value

    def register_chat(self, name: str, messages: Any) -> None:
        """Register a multi-turn messages attribute (afnio's op modules keep the last ones)."""
        self._register_other("_chats", name, messages)

    def register_model(self, name: str, model: Any) -> None:
        """Register a model-client attribute."""
        self._register_other("_models", name, model)

    def register_completion_config(self, name: str, args: Any) -> None:
        """Register a completion-arguments attribute."""
        self._register_other("_completion_configs", name, args)

    def register_function(self, name: str, func: Any) -> None:
        """Register a function attribute (an evaluator's ``eval_fn``...)."""
        self._register_other("_functions", name, func)

    # -- walking the tree ----------------------------------------------------------------
    def named_modules(
        self, memo: set[int] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Module]]:
        """This module and every sub-module, with dotted names."""
        memo = set() if memo is None else memo
        if remove_duplicate and id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name, remove_duplicate)

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        seen: set[int] = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def _named(self, kind: str, prefix: str, recurse: bool, remove_duplicate: bool = True) -> Iterator[tuple[str, Any]]:
        modules = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse else [(prefix, self)]
        seen: set[int] = set()
        for module_prefix, module in modules:
            for name, value in module.__dict__[kind].items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield (f"{module_prefix}.{name}" if module_prefix else name), value

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Parameter]]:
        """``(dotted name, parameter)`` pairs, each parameter once."""
        return self._named("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Every parameter of this module (and its sub-modules), each once."""
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Variable]]:
        return self._named("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Variable]:
        for _, buffer in self.named_buffers(recurse=recurse):
            yield buffer

    def named_chats(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        return self._named("_chats", prefix, recurse)

    def chats(self, recurse: bool = True) -> Iterator[Any]:
        for _, chat in self.named_chats(recurse=recurse):
            yield chat

    def named_models(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        return self._named("_models", prefix, recurse)

    def models(self, recurse: bool = True) -> Iterator[Any]:
        for _, model in self.named_models(recurse=recurse):
            yield model

    def named_completion_configs(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        return self._named("_completion_configs", prefix, recurse)

    def completion_configs(self, recurse: bool = True) -> Iterator[Any]:
        for _, config in self.named_completion_configs(recurse=recurse):
            yield config

    def named_functions(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        return self._named("_functions", prefix, recurse)

    def functions(self, recurse: bool = True) -> Iterator[Any]:
        for _, func in self.named_functions(recurse=recurse):
            yield func

    # -- state ---------------------------------------------------------------------------
    def state_dict(
        self, *, destination: dict[str, Any] | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        """Parameters and persistent buffers by dotted name: the module's data (model
        clients, messages and functions are code, not state). Values are detached
        copies unless ``keep_vars``.

        Example:
            >>> from afnio_langchain import cognitive as cog
            >>> class Classifier(cog.Module):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.system_prompt = cog.Parameter("Classify.", role="system prompt")
            ...         self.chat = cog.ChatCompletion()
            >>> state = Classifier().state_dict()
            >>> list(state), state["system_prompt"].data
            (['system_prompt'], 'Classify.')
        """
        out: dict[str, Any] = OrderedDict() if destination is None else destination
        for module_prefix, module in self.named_modules(prefix=prefix.rstrip(".")):
            dotted = f"{module_prefix}." if module_prefix else ""
            for name, param in module._parameters.items():
                if param is not None:
                    out[dotted + name] = param if keep_vars else param.detach()
            for name, buffer in module._buffers.items():
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    out[dotted + name] = buffer if keep_vars else buffer.detach()
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy values from ``state_dict`` (Variables or plain data) into this module's
        parameters and buffers, by name.

        Raises:
            RuntimeError: With ``strict``, keys are missing or unexpected.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"expected a dict, got {type(state_dict).__name__}")
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        for key, target in own.items():
            if key in state_dict:
                value = state_dict[key]
                target.data = value.items() if isinstance(value, Variable) and value.is_batched else (
                    value.data if isinstance(value, Variable) else value
                )
        return IncompatibleKeys(missing, unexpected)

    # -- modes and gradients -------------------------------------------------------------
    def train(self: T, mode: bool = True) -> T:
        """Set ``training`` on this module and every sub-module."""
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be a bool")
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self: T) -> T:
        """``train(False)``."""
        return self.train(False)

    def _chat_variables(self) -> Iterator[Variable]:
        """The Variables in the content of every registered chat, each once."""
        seen: set[int] = set()
        for chat in self.chats():
            for message in chat if isinstance(chat, (list, tuple)) else ():
                content = message.get("content") if isinstance(message, Mapping) else None
                for part in content if isinstance(content, (list, tuple)) else [content]:
                    if isinstance(part, Variable) and id(part) not in seen:
                        seen.add(id(part))
                        yield part

    def requires_grad_(self: T, requires_grad: bool = True) -> T:
        """Set ``requires_grad`` on every parameter and on the Variables within the
        content of multi-turn chats (``register_chat``), as afnio does.

        A chat Variable that an op produced (a non-leaf) is left alone: its flag follows
        its inputs and cannot be set.

        Args:
            requires_grad: Whether backward passes reach these Variables.

        Returns:
            This module.
        """
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        for variable in self._chat_variables():
            if variable.grad_fn is None:
                variable.requires_grad_(requires_grad)
        return self

    def empty_grad(self) -> None:
        """Clear the gradients of every parameter and of the Variables within the
        content of multi-turn chats (afnio's name; ``zero_grad`` too)."""
        for param in self.parameters():
            param.grad = []
        for variable in self._chat_variables():
            variable.grad = []

    zero_grad = empty_grad

    # -- the Trainer's hooks (afnio / Lightning) -----------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        """One training step: return ``(score, explanation)`` or ``{"loss": (score,
        explanation), ...metrics}``."""
        raise NotImplementedError("You must implement training_step in your Module subclass.")

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        """One validation step (same return value as :meth:`training_step`)."""
        raise NotImplementedError("You must implement validation_step in your Module subclass.")

    def test_step(self, batch: Any, batch_idx: int) -> Any:
        """One test step (same return value as :meth:`training_step`)."""
        raise NotImplementedError("You must implement test_step in your Module subclass.")

    def configure_optimizers(self) -> Any:
        """The optimizer the Trainer steps (e.g. ``TGD(self.parameters(), ...)``)."""
        raise NotImplementedError("You must implement configure_optimizers in your Module subclass.")

    def optimizers(self) -> Any:
        """The optimizer(s) ``configure_optimizers`` returned, once a Trainer set them."""
        return self._optimizers

    # -- display -------------------------------------------------------------------------
    def extra_repr(self) -> str:
        """Extra text for this module's line in ``repr`` (override to add some)."""
        return ""

    def __repr__(self) -> str:
        lines = [line for line in self.extra_repr().split("\n") if line]
        for name, module in self._modules.items():
            text = repr(module).replace("\n", "\n  ")
            lines.append(f"({name}): {text}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        for kind in ("_parameters", "_buffers", "_modules", *_OTHER_KINDS):
            names.update(self.__dict__.get(kind, {}))
        return sorted(names)

    # -- LangChain -----------------------------------------------------------------------
    def _forward_input(self, input: Any) -> Any:
        if isinstance(input, Mapping) and input:
            try:
                parameters = inspect.signature(self.forward).parameters
            except (TypeError, ValueError):
                parameters = {}
            named = {n for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
            takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
            if (named or takes_any) and all(
                isinstance(k, str) and (k in named or takes_any) for k in input
            ):
                return self(**input)
        return self(input)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Run ``forward`` on ``input`` as a traced LangChain run."""
        return self._call_with_config(
            run_method, input, config, run_type="chain", method=self._forward_input
        )

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async :meth:`invoke` (``forward`` runs in a worker thread)."""
        return await self._acall_with_config(
            arun_method, input, config, run_type="chain", method=self._forward_in_thread
        )

    async def _forward_in_thread(self, input: Any) -> Any:
        return await run_in_thread(self._forward_input, input)

