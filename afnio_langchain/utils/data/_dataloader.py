"""``DataLoader``: minibatches drawn from a dataset by a sampler, collated as afnio's."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from afnio_langchain.autodiff import Variable
from afnio_langchain.utils.data._sampler import RandomSampler, Sampler, SequentialSampler

T_co = TypeVar("T_co", covariant=True)


def collate(samples: Sequence[Any]) -> Any:
    """One minibatch from a list of samples, following their structure:

    - dicts: one dict, each key holding the list of the samples' values;
    - tuples: one tuple, collated position by position (recursively);
    - Variables: one Variable whose data is the list of their data, with the first
      one's role and ``requires_grad``;
    - anything else: the list of samples.

    Example:
        >>> from afnio_langchain import Variable
        >>> from afnio_langchain.utils.data import collate
        >>> collate([{"q": "a", "n": 1}, {"q": "b", "n": 2}])
        {'q': ['a', 'b'], 'n': [1, 2]}
        >>> x, (y, z) = collate([(Variable("a", role="x"), (Variable(1), "p")),
        ...                      (Variable("b", role="x"), (Variable(2), "q"))])
        >>> x.data, x.role, y.data, z
        (['a', 'b'], 'x', [1, 2], ['p', 'q'])
    """
    samples = list(samples)
    if not samples:
        return samples
    if all(isinstance(s, dict) for s in samples):
        return {key: [s[key] for s in samples] for key in samples[0]}
    if all(isinstance(s, tuple) for s in samples):
        return tuple(_collate_group(list(group)) for group in zip(*samples))
    if all(isinstance(s, Variable) for s in samples):
        return _batch_variables(samples)
    return samples


def _collate_group(group: list[Any]) -> Any:
    if all(isinstance(x, Variable) for x in group):
        return _batch_variables(group)
    if all(isinstance(x, tuple) for x in group):
        return collate(group)
    return [collate([x]) if isinstance(x, tuple) else x for x in group]


def _batch_variables(variables: Sequence[Variable]) -> Variable:
    first = variables[0]
    return Variable([v.data for v in variables], role=first.role, requires_grad=first.requires_grad)


class DataLoader(Generic[T_co]):
    """Iterates over ``dataset`` in minibatches of ``batch_size`` samples, in the order
    ``sampler`` gives (or shuffled, or in order), collated by :func:`collate`.

    Args:
        dataset: A :class:`~afnio_langchain.utils.data.Dataset` or any sequence.
        batch_size: Samples per minibatch.
        shuffle: Draw a new random order each pass (exclusive with ``sampler``).
        sampler: An iterable of indices (a :class:`Sampler`).
        drop_last: Drop the last, incomplete minibatch.
        seed: Seed of the shuffling sampler (then every pass has the same order).

    Example:
        >>> from afnio_langchain.utils.data import DataLoader
        >>> loader = DataLoader([{"q": str(i)} for i in range(5)], batch_size=2, drop_last=True)
        >>> len(loader), list(loader)
        (2, [{'q': ['0', '1']}, {'q': ['2', '3']}])
    """

    def __init__(
        self,
        dataset: Sequence[T_co],
        batch_size: int | None = 1,
        shuffle: bool = False,
        sampler: Sampler | Iterable[int] | None = None,
        drop_last: bool = False,
        seed: int | None = None,
    ) -> None:
        if shuffle not in (True, False):
            raise ValueError(f"shuffle must be True or False, got shuffle={shuffle!r}")
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        if sampler is None:
            sampler = RandomSampler(dataset, seed=seed) if shuffle else SequentialSampler(dataset)
        self.sampler = sampler

    # afnio's name for the same sampler
    @property
    def index_sampler(self) -> Sampler | Iterable[int]:
        return self.sampler

    def __iter__(self) -> Iterator[Any]:
        if self.batch_size is None:  # no batching: one sample at a time
            for index in self.sampler:
                yield self.dataset[index]
            return
        batch: list[Any] = []
        for index in self.sampler:
            batch.append(self.dataset[index])
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch and not self.drop_last:
            yield collate(batch)

    def __len__(self) -> int:
        n = len(self.sampler) if hasattr(self.sampler, "__len__") else len(self.dataset)  # type: ignore[arg-type]
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
