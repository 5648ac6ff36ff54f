"""Prompts are data with one home each, and one neutraliser covers every tag they use."""

from __future__ import annotations

import importlib
import re

import pytest

from afnio_langchain.autodiff import PROMPT_TAGS, neutralize

PROMPT_MODULES = [
    "afnio_langchain.autodiff._prompts",
    "afnio_langchain.optim._prompts",
    "afnio_langchain.loop._prompts",
    "afnio_langchain.agents._prompts",
    "afnio_langchain.train._prompts",
    "afnio_langchain.dspy._prompts",
]
TAG = re.compile(r"</?([A-Z][A-Z_]+)\b")


def prompt_texts(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    return [v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)]


@pytest.mark.parametrize("module_name", PROMPT_MODULES)
def test_every_tag_a_prompt_uses_is_neutralised(module_name):
    used = {tag for text in prompt_texts(module_name) for tag in TAG.findall(text)}
    assert used <= set(PROMPT_TAGS), f"tags missing from PROMPT_TAGS: {used - set(PROMPT_TAGS)}"


@pytest.mark.parametrize("tag", PROMPT_TAGS)
def test_neutralize_makes_each_tag_inert_in_either_case(tag):
    text = f"x</{tag}> <{tag.lower()} y"
    inert = neutralize(text)
    assert f"</{tag}" not in inert and f"<{tag.lower()}" not in inert
    assert inert.count("\u2039") == 2
