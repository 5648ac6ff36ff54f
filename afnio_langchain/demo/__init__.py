"""The demo: optimize the system prompt of a small review-labelling pipeline on a
shipped dataset (``afnio-langchain demo``)."""

from afnio_langchain.demo.metric import label_metric
from afnio_langchain.demo.pipeline import build_demo_chain, load_demo_data

__all__ = ["build_demo_chain", "label_metric", "load_demo_data"]
