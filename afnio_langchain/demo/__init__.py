"""The demo: optimize the system prompt of a small review-labelling pipeline on a
shipped dataset (``afnio-langchain demo``)."""

from afnio_langchain.demo._metric import label_metric
from afnio_langchain.demo._pipeline import TARGET_KEY, build_demo_chain, load_demo_data
from afnio_langchain.demo._prompts import CONSTRAINTS

__all__ = ["CONSTRAINTS", "TARGET_KEY", "build_demo_chain", "label_metric", "load_demo_data"]
