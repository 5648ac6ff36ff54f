"""``afnio-langchain export``: a run's learned prompts as plain LangChain prompt templates.

``optimize`` writes ``prompts.json``, which this package reads. ``export`` writes the
chain's prompt templates with those values in them, in LangChain's own serialization
(``langchain_core.load``), so an app loads them with LangChain alone. It calls no model.
"""

from __future__ import annotations

import argparse
from typing import Any

from afnio_langchain.cli import _setup as setup
from afnio_langchain.cli._setup import CliError
from afnio_langchain.runnables import TrainableChain, read_prompts_file
from afnio_langchain.train import apply_prompts, atomic_write_json, trainable_chain

FORMAT = "langchain_core.load"
"""The ``format`` of an export file: each template is ``langchain_core.load.dumpd``'s."""


def cmd_export(args: argparse.Namespace) -> int:
    saved = read_prompts_file(args.prompts)
    target = setup.import_chain(args.chain)
    with setup.model_pool() as pool:
        # The templates are all export needs: a factory that takes the model gets the
        # offline fake unless --model names one (no model is called either way).
        forward = (args.model or "scripted") if target.takes_model else None
        chain = setup.build_chain(target, pool, forward)
        chain, params = trainable_chain(chain, roles=args.roles)
        if not isinstance(chain, TrainableChain):
            raise CliError(
                f"{args.chain} builds its prompts from afnio Variables, not LangChain prompt "
                f"templates, so there is no template to export: {args.prompts} holds its "
                "learned values (load them with apply_prompts or TrainableChain.load)"
            )
        apply_prompts(params, saved, str(args.prompts), chain=chain)
        templates = {f"prompt_{k}": prompt.export() for k, prompt in enumerate(chain.prompts)}
    if args.out is not None:
        written = _serialized(templates)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, {"format": FORMAT, "templates": written})
    for line in _learned_lines(chain, templates):
        print(line)
    if args.out is not None:
        print(f"templates: {args.out} (langchain_core.load.load(data['templates']['prompt_0']))")
    return 0


def _serialized(templates: dict[str, Any]) -> dict[str, Any]:
    """Each template as LangChain serializes it; refused (nothing written) where
    LangChain cannot load it back."""
    from langchain_core.load import dumpd

    written = {}
    for name, template in templates.items():
        data = dumpd(template)
        missing = _not_serializable(data)
        if missing:
            raise CliError(
                f"{name} holds a {missing}, which LangChain cannot serialize, so nothing was "
                "written; run export without --out to print the learned messages, and put "
                "them in your template"
            )
        written[name] = data
    return written


def _not_serializable(data: Any) -> str | None:
    """The name of the first part of ``dumpd``'s output LangChain could not serialize."""
    if isinstance(data, dict):
        if data.get("type") == "not_implemented":
            return str(data.get("name") or data.get("id", ["?"])[-1])
        parts: Any = data.values()
    elif isinstance(data, list):
        parts = data
    else:
        return None
    for part in parts:
        found = _not_serializable(part)
        if found:
            return found
    return None


def _learned_lines(chain: TrainableChain, templates: dict[str, Any]) -> list[str]:
    """Each trained message as the template text LangChain takes (braces escaped), read
    from ``templates`` (the exported ones, by ``prompt_K``)."""
    from langchain_core.prompts import PromptTemplate

    named = chain.named_prompts()
    lines = []
    for k, prompt in enumerate(chain.prompts):
        exported = templates[f"prompt_{k}"]
        for index in prompt.variables:
            key = f"prompt_{k}.message_{index}"
            if isinstance(exported, PromptTemplate):
                text = exported.template
            else:
                text = exported.messages[index].prompt.template
            lines.append(f"{key} ({named[key].role}):")
            lines.extend("    " + line for line in text.splitlines() or [""])
    return lines
