"""Safe ``{name}`` filling for message templates.

Only ``{identifier}`` fields are filled, in one pass, with values inserted verbatim:
a value is never parsed again, format specs and attribute access (``{x.__class__}``,
``{x!r}``, ``{0}``) are not fields, and other braces (JSON examples, code) stay as
written. ``{{name}}`` writes a literal ``{name}``. LangChain's f-string templates (``{{`` for a
literal brace) convert to and from this syntax (:func:`from_fstring`, :func:`to_fstring`).
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping, Sequence

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD = re.compile(r"\{\{(" + _IDENT.pattern + r")\}\}|\{(" + _IDENT.pattern + r")\}")
"""The whole grammar: ``{{name}}`` (a literal ``{name}``) or ``{name}`` (a field)."""
_FIELD_LIKE = re.compile(r"\{(" + _IDENT.pattern + r")\}")


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
    return list(_fields_of(template))


@functools.lru_cache(maxsize=1024)
def _fields_of(template: str) -> tuple[str, ...]:
    # Read for every call of a step (its input keys): the same few prompts each time.
    if "{" not in template:
        return ()
    names: dict[str, None] = {}
    for match in _FIELD.finditer(template):
        if match.group(2):
            names[match.group(2)] = None
    return tuple(names)


def fill(template: str, values: Mapping[str, object], *, where: str = "template") -> str:
    """Replace ``{name}`` fields with ``str(values[name])``.

    Raises:
        MissingInputError: A field has no value; the message names it and ``where``.
    """
    if "{" not in template:  # no field: most system prompts, every filled-in value
        return template
    pieces = _pieces_of(template)
    out = [pieces[0]]
    for j in range(1, len(pieces), 2):
        name = pieces[j]
        if name not in values:
            available = ", ".join(sorted(values)) or "none"
            raise MissingInputError(
                f"{where} uses {{{name}}} but no input named {name!r} was given "
                f"(inputs: {available})"
            )
        out.append(str(values[name]))
        out.append(pieces[j + 1])
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _pieces_of(template: str) -> tuple[str, ...]:
    """``template`` parsed once (it is filled for every item of every call): literal
    text and field names alternating, literal first and last, ``{{name}}`` already
    turned into its literal ``{name}``."""
    pieces: list[str] = []
    literal: list[str] = []
    pos = 0
    for match in _FIELD.finditer(template):
        literal.append(template[pos : match.start()])
        pos = match.end()
        if match.group(1):
            literal.append("{" + match.group(1) + "}")
        else:
            pieces += ["".join(literal), match.group(2)]
            literal = []
    literal.append(template[pos:])
    pieces.append("".join(literal))
    return tuple(pieces)


def escape_fields(text: str) -> str:
    """Make every ``{identifier}`` in ``text`` literal in this package's syntax."""
    return _FIELD_LIKE.sub(lambda m: "{{" + m.group(1) + "}}", text)


def from_fstring(template: str) -> str:
    """A LangChain f-string template in this package's syntax.

    Example:
        >>> from afnio_langchain.autodiff import from_fstring
        >>> from_fstring('Answer {question} as {{"answer": ...}}, not {{question}}')
        'Answer {question} as {"answer": ...}, not {{question}}'
    """
    out: list[str] = []
    emitted = 0
    literal_text: list[str] = []  # literal pieces between fields (Formatter splits at "{{")
    for literal, field, spec, conversion in string.Formatter().parse(template):
        literal_text.append(literal)
        if field is None:
            continue
        if not _IDENT.fullmatch(field) or spec or conversion:
            raise ValueError(
                f"template field {{{field}}} is not a plain variable name; only {{name}} "
                "fields can be converted"
            )
        out.append(escape_fields("".join(literal_text)))
        literal_text = []
        out.append("{" + field + "}")
        emitted += 1
    out.append(escape_fields("".join(literal_text)))
    converted = "".join(out)
    if sum(1 for m in _FIELD.finditer(converted) if m.group(2)) != emitted:
        # A literal "{" right before a field and "}" right after it would read as "{{name}}".
        raise ValueError(
            f"template {template!r} puts literal braces directly around a field "
            "('{{{name}}}'); put a character between the brace and the field"
        )
    return converted


def to_fstring(template: str, fields: Sequence[str]) -> str:
    """This package's template syntax -> a LangChain f-string template whose only
    fields are ``fields``; every other brace (learned text included) becomes literal.

    Example:
        >>> from afnio_langchain.autodiff import to_fstring
        >>> to_fstring('Use {topic}. Reply as {"a": 1} {{literal}}', ["topic"])
        'Use {topic}. Reply as {{"a": 1}} {{literal}}'
    """
    allowed = set(fields)
    out, pos = [], 0
    for match in _FIELD.finditer(template):
        out.append(_escape_braces(template[pos : match.start()]))
        if match.group(2) and match.group(2) in allowed:
            out.append("{" + match.group(2) + "}")
        else:
            out.append("{{" + (match.group(1) or match.group(2)) + "}}")
        pos = match.end()
    out.append(_escape_braces(template[pos:]))
    return "".join(out)


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")
