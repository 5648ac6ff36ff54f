"""Datasets, samplers and the ``DataLoader``, as in afnio (and ``torch.utils.data``):
a map-style :class:`Dataset`, samplers that yield indices, and a loader that draws
minibatches and collates them (dicts into dicts of lists, tuples position by position,
Variables into one minibatch Variable).

Example:
    >>> from afnio_langchain import Variable
    >>> from afnio_langchain.utils.data import DataLoader
    >>> data = [(Variable(f"message {i}", role="message"), Variable(i % 2, role="label"))
    ...         for i in range(5)]
    >>> [x.data for x, _ in DataLoader(data, batch_size=2)]
    [['message 0', 'message 1'], ['message 2', 'message 3'], ['message 4']]
"""

from afnio_langchain.utils.data._dataloader import DataLoader, collate
from afnio_langchain.utils.data._dataset import Dataset
from afnio_langchain.utils.data._sampler import (
    RandomSampler,
    Sampler,
    SequentialSampler,
    WeightedRandomSampler,
)

__all__ = [
    "DataLoader",
    "Dataset",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "WeightedRandomSampler",
    "collate",
]
