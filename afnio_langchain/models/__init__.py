"""Model clients: one protocol, adapters for LangChain, openai and DSPy, usage and limits."""

from afnio_langchain.models.langchain_adapter import LangChainChatModelClient
from afnio_langchain.models.limits import concurrency_limit, get_concurrency_limit
from afnio_langchain.models.openai_adapter import MalformedReplyError, OpenAIClient
from afnio_langchain.models.protocol import (
    BaseModelClient,
    Completion,
    InputTooLongError,
    JsonSchema,
    Message,
    ModelClient,
)
from afnio_langchain.models.resolve import as_model_client
from afnio_langchain.models.retry import RetryPolicy, is_transient
from afnio_langchain.models.secrets import redact
from afnio_langchain.models.structured import StructuredOutputError, request_fields
from afnio_langchain.models.usage import UsageCounts, UsageTracker, get_usage, track_usage

__all__ = [
    "BaseModelClient",
    "Completion",
    "InputTooLongError",
    "JsonSchema",
    "LangChainChatModelClient",
    "MalformedReplyError",
    "Message",
    "ModelClient",
    "OpenAIClient",
    "RetryPolicy",
    "StructuredOutputError",
    "UsageCounts",
    "UsageTracker",
    "as_model_client",
    "concurrency_limit",
    "get_concurrency_limit",
    "get_usage",
    "is_transient",
    "redact",
    "request_fields",
    "track_usage",
]
