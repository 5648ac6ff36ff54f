"""The demo pipeline: a small LCEL chain that labels product reviews, and its data."""

from __future__ import annotations

import importlib.resources
from typing import Any

from langchain_core.runnables import Runnable, RunnablePassthrough

from afnio_langchain.autodiff import Variable
from afnio_langchain.demo import _prompts as prompts
from afnio_langchain.runnables import ChatCompletionRunnable
from afnio_langchain.train import Dataset, load_dataset

TRAIN_FILE = "demo_sentiment_train.jsonl"
VAL_FILE = "demo_sentiment_val.jsonl"
TARGET_KEY = "label"


def _clean(example: dict[str, Any]) -> str:
    return " ".join(str(example["review"]).split())


def build_demo_chain(model: Any, *, max_tokens: int = 16) -> tuple[Runnable, Variable]:
    """The demo chain and its trainable system prompt.

    ``{"review": ...}`` -> whitespace cleaned -> a chat call whose system prompt is
    trainable -> a ``Variable`` holding the model's label.

    Args:
        model: Any chat model or client the package accepts.
        max_tokens: Cap on the reply length (a label is one word).

    Example:
        >>> from afnio_langchain.demo import build_demo_chain
        >>> from afnio_langchain.testing import ScriptedChatModel
        >>> chain, system = build_demo_chain(ScriptedChatModel(forward="positive"))
        >>> chain.invoke({"review": "Lovely  mug."}).data, system.requires_grad
        ('positive', True)
    """
    system = Variable(
        prompts.INITIAL_SYSTEM_PROMPT, role=prompts.SYSTEM_PROMPT_ROLE, requires_grad=True
    )
    classify = ChatCompletionRunnable(
        model=model,
        messages=[("system", system), ("user", prompts.USER_TEMPLATE)],
        output_role=prompts.OUTPUT_ROLE,
        max_tokens=max_tokens,
    )
    chain = RunnablePassthrough.assign(review=_clean) | classify
    return chain.with_config(run_name="afnio_demo_sentiment"), system


def load_demo_data() -> tuple[Dataset, Dataset]:
    """The shipped training and validation sets (6 and 4 labelled reviews).

    Example:
        >>> from afnio_langchain.demo import load_demo_data
        >>> train, val = load_demo_data()
        >>> len(train), len(val), sorted(train[0])
        (6, 4, ['label', 'review'])
    """
    root = importlib.resources.files("afnio_langchain") / "data"
    with importlib.resources.as_file(root / TRAIN_FILE) as train_path:
        train = load_dataset(train_path, required=["review", TARGET_KEY])
    with importlib.resources.as_file(root / VAL_FILE) as val_path:
        val = load_dataset(val_path, required=["review", TARGET_KEY])
    return train, val
