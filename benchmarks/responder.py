"""The benchmark's fake model: a deterministic responder for the loopback OpenAI server.

It answers, from the request alone, the calls of this package (forward text, JSON
gradients, JSON optimizer proposals and condensations) and those of TextGrad
(plain-text feedback, ``<IMPROVED_VARIABLE>`` proposals, gradient reductions), so the
two libraries run against the same server through their real HTTP clients. Every reply
of one kind has the same length, which makes the critical-path bound exact, and every
call is recorded with its kind and token counts (the server's whitespace count), the
one measuring instrument used for both libraries.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from afnio_langchain.models import required_keys_in
from afnio_langchain.optim._prompts import CONDENSED_KEY, PROPOSAL_KEY
from afnio_langchain.testing import count_tokens, request_text

__all__ = [
    "KINDS",
    "PURPOSE_OF_KIND",
    "BenchmarkResponder",
    "CallRecord",
    "classify",
]

FORWARD = "forward"
BACKWARD = "backward"
OPTIMIZER = "optimizer"
CONDENSE = "condense"
TEXTGRAD_BACKWARD = "textgrad_backward"
TEXTGRAD_OPTIMIZER = "textgrad_optimizer"
TEXTGRAD_REDUCE = "textgrad_reduce"
KINDS = (
    FORWARD,
    BACKWARD,
    OPTIMIZER,
    CONDENSE,
    TEXTGRAD_BACKWARD,
    TEXTGRAD_OPTIMIZER,
    TEXTGRAD_REDUCE,
)
PURPOSE_OF_KIND = {
    FORWARD: "forward",
    BACKWARD: "backward",
    OPTIMIZER: "optimizer",
    CONDENSE: "optimizer",
    TEXTGRAD_BACKWARD: "backward",
    TEXTGRAD_OPTIMIZER: "optimizer",
    TEXTGRAD_REDUCE: "backward",
}

# How TextGrad's requests are recognised (from textgrad 0.1.x's prompt constants:
# autograd/llm_backward_prompts.py, optimizer/optimizer_prompts.py, reduce_prompts.py).
TEXTGRAD_BACKWARD_MARKER = "You are the gradient (feedback) engine."
TEXTGRAD_REDUCE_MARKER = "critically aggregate and summarize the feedback"
TEXTGRAD_START_TAG = "<IMPROVED_VARIABLE>"
TEXTGRAD_END_TAG = "</IMPROVED_VARIABLE>"
_TEXTGRAD_VALUE = re.compile(r"<VARIABLE> (.*?) </VARIABLE>", re.S)
_OUR_VALUE = re.compile(r'<VARIABLE role="[^"]*">\n(.*?)\n</VARIABLE>', re.S)

REVISION = "State the final number first and check the arithmetic."
"""The sentence every proposal appends to the current value (no braces: template
fields of the value are kept as they are)."""

_FORWARD_FILLER = (
    "the answer follows from the question by adding both numbers and it is written here "
    "in plain words with a short justification for the reader"
).split()
_FEEDBACK_FILLER = (
    "the instruction should ask for the exact number first then a one line check so the "
    "next stage can verify it without guessing"
).split()


def _system_text(body: dict[str, Any]) -> str:
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "system":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


def classify(body: dict[str, Any]) -> str:
    """The kind of a chat-completion request (one of :data:`KINDS`).

    Example:
        >>> classify({"messages": [{"role": "user", "content": "What is 2 + 2?"}]})
        'forward'
    """
    system = _system_text(body)
    if TEXTGRAD_BACKWARD_MARKER in system:
        return TEXTGRAD_BACKWARD
    if TEXTGRAD_START_TAG in system:
        return TEXTGRAD_OPTIMIZER
    if TEXTGRAD_REDUCE_MARKER in system:
        return TEXTGRAD_REDUCE
    keys = required_keys_in(request_text(body))
    if keys == [PROPOSAL_KEY]:
        return OPTIMIZER
    if keys == [CONDENSED_KEY]:
        return CONDENSE
    if keys:
        return BACKWARD
    return FORWARD


def _words(filler: Sequence[str], n: int, head: str) -> str:
    body = [filler[i % len(filler)] for i in range(max(0, n - 1))]
    return " ".join([head, *body])


def _digest(text: str) -> str:
    return hashlib.blake2s(text.encode("utf-8"), digest_size=4).hexdigest()


def _last_user(body: dict[str, Any]) -> str:
    last = ""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            last = content if isinstance(content, str) else str(content)
    return last


PREFIX_BLOCK = 16
"""Tokens per block of the simulated prompt cache (providers cache whole blocks of a
prompt's prefix; OpenAI's are 128 tokens, from 1,024 up)."""


@dataclass(frozen=True)
class CallRecord:
    """One answered request: its kind, token counts and when it arrived.

    ``cached_input_tokens`` is what a provider's prompt cache could have served: the
    longest prefix of the request, in whole :data:`PREFIX_BLOCK`-token blocks, that an
    earlier request of the same step began with (no minimum length: it measures how
    stable the prompts' prefixes are, not a price)."""

    kind: str
    input_tokens: int
    output_tokens: int
    arrived: float
    cached_input_tokens: int = 0

    @property
    def purpose(self) -> str:
        return PURPOSE_OF_KIND[self.kind]


class BenchmarkResponder:
    """A thread-safe responder for :class:`~afnio_langchain.testing._server.OpenAICompatServer`.

    Replies have fixed lengths per kind: forward answers ``forward_words`` words, each
    gradient ``feedback_words`` words (one per requested key for this package, one per
    call for TextGrad), proposals the current value plus :data:`REVISION`.

    Args:
        forward_words: Words in every forward reply.
        feedback_words: Words in every gradient (and condensed or reduced feedback).

    Example:
        >>> import json
        >>> responder = BenchmarkResponder(forward_words=5, feedback_words=3)
        >>> responder({"messages": [{"role": "user", "content": "What is 2 + 2?"}]}).split()[1:]
        ['the', 'answer', 'follows', 'from']
        >>> ask = 'Reply with only a JSON object with exactly these keys: "var_1".'
        >>> sorted(json.loads(responder({"messages": [{"role": "user", "content": ask}]})))
        ['var_1']
        >>> [r.kind for r in responder.records]
        ['forward', 'backward']
    """

    def __init__(self, forward_words: int = 24, feedback_words: int = 16) -> None:
        if forward_words < 1 or feedback_words < 1:
            raise ValueError("forward_words and feedback_words must be >= 1")
        self.forward_words = forward_words
        self.feedback_words = feedback_words
        self._lock = threading.Lock()
        self._records: list[CallRecord] = []
        self._prefixes: set[int] = set()

    # -- replies ---------------------------------------------------------------------------
    def __call__(self, body: dict[str, Any]) -> str:
        kind = classify(body)
        text = self.reply(kind, body)
        tokens = request_text(body).split()
        with self._lock:
            cached = self._cached_prefix(tokens)
            self._records.append(
                CallRecord(kind, len(tokens), count_tokens(text), time.perf_counter(), cached)
            )
        return text

    def _cached_prefix(self, tokens: list[str]) -> int:
        """Tokens of ``tokens``' longest block prefix seen before; remembers its prefixes."""
        cached = 0
        for end in range(PREFIX_BLOCK, len(tokens) + 1, PREFIX_BLOCK):
            key = hash(tuple(tokens[:end]))
            if key in self._prefixes:
                cached = end
            else:
                self._prefixes.add(key)
        return cached

    def reply(self, kind: str, body: dict[str, Any]) -> str:
        """The reply to a request of ``kind`` (see :func:`classify`)."""
        text = request_text(body)
        tag = _digest(text)
        if kind == FORWARD:
            return _words(_FORWARD_FILLER, self.forward_words, f"Draft-{tag}:")
        if kind in (TEXTGRAD_BACKWARD, TEXTGRAD_REDUCE):
            return self.feedback(tag)
        if kind == BACKWARD:
            keys = required_keys_in(text) or []
            return json.dumps({key: self.feedback(f"{tag}-{key}") for key in keys})
        if kind == CONDENSE:
            return json.dumps({CONDENSED_KEY: self.feedback(tag)})
        if kind == OPTIMIZER:
            match = _OUR_VALUE.search(_last_user_with_value(body))
            return json.dumps({PROPOSAL_KEY: _revised(match.group(1) if match else "")})
        if kind == TEXTGRAD_OPTIMIZER:
            match = _TEXTGRAD_VALUE.search(_last_user(body))
            value = _revised(match.group(1) if match else "")
            return f"{TEXTGRAD_START_TAG}{value}{TEXTGRAD_END_TAG}"
        raise ValueError(f"unknown request kind {kind!r}; expected one of {KINDS}")

    def feedback(self, tag: str) -> str:
        """One gradient text of ``feedback_words`` words."""
        return _words(_FEEDBACK_FILLER, self.feedback_words, f"Feedback-{tag}:")

    # -- what was answered -----------------------------------------------------------------
    @property
    def records(self) -> list[CallRecord]:
        """Every answered request, in arrival order."""
        with self._lock:
            return list(self._records)

    def reset(self) -> None:
        """Forget the recorded calls."""
        with self._lock:
            self._records.clear()
            self._prefixes.clear()


def _last_user_with_value(body: dict[str, Any]) -> str:
    """The first user message holding the value (a re-asked proposal appends turns)."""
    for message in body.get("messages") or []:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            content = content if isinstance(content, str) else str(content)
            if _OUR_VALUE.search(content):
                return content
    return ""


def _revised(value: str) -> str:
    value = value.strip()
    if value.endswith(REVISION):  # a second step: vary the text so it still changes
        return f"{value} Then restate it once."
    return f"{value} {REVISION}".strip()


def usage_by_purpose(records: Sequence[CallRecord]) -> dict[str, dict[str, int]]:
    """Calls and tokens per purpose (``forward``, ``backward``, ``optimizer``) and in total.

    Example:
        >>> usage_by_purpose([CallRecord("forward", 10, 3, 0.0)])["total"]
        {'calls': 1, 'input_tokens': 10, 'output_tokens': 3, 'cached_input_tokens': 0}
    """
    out: dict[str, dict[str, int]] = {}
    for purpose in ("forward", "backward", "optimizer", "total"):
        out[purpose] = {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cached_input_tokens": 0}
    for record in records:
        for key in (record.purpose, "total"):
            out[key]["calls"] += 1
            out[key]["input_tokens"] += record.input_tokens
            out[key]["output_tokens"] += record.output_tokens
            out[key]["cached_input_tokens"] += record.cached_input_tokens
    return out
