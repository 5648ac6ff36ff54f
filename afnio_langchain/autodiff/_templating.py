"""Safe ``{name}`` filling for message templates.

Only ``{identifier}`` fields are filled, in one pass, with values inserted verbatim:
a value is never parsed again, format specs and attribute access (``{x.__class__}``,
``{x!r}``, ``{0}``) are not fields, and other braces (JSON examples, code) stay as
written. ``{{name}}`` writes a literal ``{name}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_FIELD = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MissingInputError(KeyError):
    """A template names an input that was not given."""

    def __str__(self) -> str:
        return str(self.args[0])


def placeholders(template: str) -> list[str]:
    """The ``{name}`` fields of ``template``, each once, in order of appearance.

    Example:
        >>> from afnio_langchain.autodiff import placeholders
        >>> placeholders('Translate to {language}; reply as {"text": ...} {{literal}} {language}')
        ['language']
    """
    names: dict[str, None] = {}
    for match in _FIELD.finditer(template):
        if match.group(2):
            names[match.group(2)] = None
    return list(names)


def fill(template: str, values: Mapping[str, object], *, where: str = "template") -> str:
    """Replace ``{name}`` fields with ``str(values[name])``.

    Raises:
        MissingInputError: A field has no value; the message names it and ``where``.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "{" + match.group(1) + "}"
        name = match.group(2)
        if name not in values:
            available = ", ".join(sorted(values)) or "none"
            raise MissingInputError(
                f"{where} uses {{{name}}} but no input named {name!r} was given "
                f"(inputs: {available})"
            )
        return str(values[name])

    return _FIELD.sub(replace, template)
