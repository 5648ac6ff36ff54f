"""afnio's ``utils``: :mod:`~afnio_langchain.utils.data` (datasets, samplers, the
``DataLoader``) and :mod:`~afnio_langchain.utils.datasets` (ready-made datasets)."""

from afnio_langchain.utils import data, datasets

__all__ = ["data", "datasets"]
