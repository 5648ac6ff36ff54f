"""Which object ``as_model_client`` hands back for what a user passes as a model.

A LangChain chat model is resolved on every call it serves (each stage of a chain, the
backward model, the optimizer), so the kind of each class is remembered
(``models/_resolve.py``); these tests hold that memory to the answers a fresh check
gives.
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import FakeListChatModel

from afnio_langchain.models import Completion, LangChainChatModelClient, as_model_client


class SpeaksBothChat(FakeListChatModel):
    """A chat model that also speaks the package's client protocol itself."""

    model_name: str = "both"

    async def acomplete(self, messages: Any, **kwargs: Any) -> Completion:
        return Completion("from acomplete", self.model_name, 1, 1)


def test_a_plain_chat_model_is_wrapped_on_every_call_around_that_same_model():
    chat = FakeListChatModel(responses=["ok"])
    first, second = as_model_client(chat), as_model_client(chat)
    assert isinstance(first, LangChainChatModelClient)
    assert first.model is chat and second.model is chat
    other = FakeListChatModel(responses=["other"])
    assert as_model_client(other).model is other


def test_a_chat_model_with_its_own_acomplete_is_used_as_it_is_after_its_base_class():
    as_model_client(FakeListChatModel(responses=["ok"]))  # the base class is seen first
    both = SpeaksBothChat(responses=["never used"])
    assert as_model_client(both) is both
    assert isinstance(as_model_client(FakeListChatModel(responses=["ok"])),
                      LangChainChatModelClient)


def test_an_object_of_no_accepted_kind_is_refused_with_the_kinds_listed():
    with pytest.raises(TypeError, match="LangChain chat model"):
        as_model_client(object())
