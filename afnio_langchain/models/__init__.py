"""Model clients: one protocol, adapters for LangChain, openai and DSPy, usage and limits.

Everything the other layers need from a model goes through here: the client protocol
(:class:`ModelClient`, :class:`BaseModelClient`, :func:`as_model_client`), structured
replies (:func:`request_fields` and its JSON instruction), the retry policy, usage
counting, the concurrency limit, secret masking, and the packaged local model.
"""

from afnio_langchain.models._langchain_adapter import (
    PURPOSE_METADATA_KEY,
    LangChainChatModelClient,
    message_text,
    record_reply_usage,
)
from afnio_langchain.models._limits import call_slot, concurrency_limit, get_concurrency_limit
from afnio_langchain.models._local import INSTALL_HINT as LOCAL_INSTALL_HINT
from afnio_langchain.models._local import (
    LocalModelServer,
    LocalServerError,
    local_model_available,
)
from afnio_langchain.models._openai_adapter import OpenAIClient
from afnio_langchain.models._protocol import (
    BaseModelClient,
    Completion,
    InputTooLongError,
    JsonSchema,
    MalformedReplyError,
    Message,
    ModelClient,
)
from afnio_langchain.models._resolve import as_model_client, is_openai_client, resolve_call_model
from afnio_langchain.models._retry import (
    ReplyTimeoutError,
    RetryPolicy,
    is_transient,
    is_unrecoverable,
    status_code_of,
    unrecoverable_cause,
)
from afnio_langchain.models._secrets import is_secret_field, redact, redact_value
from afnio_langchain.models._structured import (
    StructuredOutputError,
    json_instruction,
    parse_json_object,
    parse_score,
    request_fields,
    required_keys_in,
)
from afnio_langchain.models._usage import (
    PURPOSES,
    UsageCounts,
    UsageTracker,
    get_usage,
    record_usage,
    track_usage,
)

__all__ = [
    "LOCAL_INSTALL_HINT",
    "PURPOSES",
    "PURPOSE_METADATA_KEY",
    "BaseModelClient",
    "Completion",
    "InputTooLongError",
    "JsonSchema",
    "LangChainChatModelClient",
    "LocalModelServer",
    "LocalServerError",
    "MalformedReplyError",
    "Message",
    "ModelClient",
    "OpenAIClient",
    "ReplyTimeoutError",
    "RetryPolicy",
    "StructuredOutputError",
    "UsageCounts",
    "UsageTracker",
    "as_model_client",
    "call_slot",
    "concurrency_limit",
    "get_concurrency_limit",
    "get_usage",
    "is_openai_client",
    "is_secret_field",
    "is_transient",
    "is_unrecoverable",
    "json_instruction",
    "local_model_available",
    "message_text",
    "parse_json_object",
    "parse_score",
    "record_reply_usage",
    "record_usage",
    "redact",
    "redact_value",
    "request_fields",
    "required_keys_in",
    "resolve_call_model",
    "status_code_of",
    "track_usage",
    "unrecoverable_cause",
]
