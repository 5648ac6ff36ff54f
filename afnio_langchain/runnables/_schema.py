"""``Variable`` in LangChain's Runnable schemas (``get_output_jsonschema`` and the like)."""

from __future__ import annotations

from typing import Annotated, Any

from langchain_core.utils.pydantic import create_model_v2
from pydantic import WithJsonSchema

from afnio_langchain.autodiff import Variable

VariableSchema = Annotated[
    Variable,
    WithJsonSchema({"type": "string", "description": "text held in a Variable of the graph"}),
]
"""``Variable`` as a pydantic annotation whose JSON schema is a string (for Runnable schemas)."""


def output_schema(name: str, root: Any = VariableSchema) -> Any:
    """The output schema model of a Runnable named ``name`` that returns ``root``.

    Example:
        >>> from afnio_langchain.runnables._schema import output_schema
        >>> output_schema("StepOutput").model_json_schema()["type"]
        'string'
    """
    return create_model_v2(name, root=root)


__all__ = ["VariableSchema", "output_schema"]
