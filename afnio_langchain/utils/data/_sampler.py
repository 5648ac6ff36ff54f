"""Samplers: iterables of dataset indices (sequential, shuffled, weighted)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence, Sized
from typing import Generic, TypeVar

T_co = TypeVar("T_co", covariant=True)


class Sampler(Generic[T_co]):
    """Base class of samplers: ``__iter__`` yields indices (or lists of indices), and
    ``__len__`` says how many.

    Example:
        >>> from afnio_langchain.utils.data import Sampler
        >>> class Backwards(Sampler[int]):
        ...     def __init__(self, n):
        ...         self.n = n
        ...     def __iter__(self):
        ...         return iter(range(self.n - 1, -1, -1))
        ...     def __len__(self):
        ...         return self.n
        >>> list(Backwards(3))
        [2, 1, 0]
    """

    def __iter__(self) -> Iterator[T_co]:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class SequentialSampler(Sampler[int]):
    """``0, 1, ..., len(data_source) - 1``, in order.

    Example:
        >>> from afnio_langchain.utils.data import SequentialSampler
        >>> list(SequentialSampler(["a", "b", "c"]))
        [0, 1, 2]
    """

    def __init__(self, data_source: Sized) -> None:
        self.data_source = data_source

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self.data_source)))

    def __len__(self) -> int:
        return len(self.data_source)


def _rng(seed: int | None) -> random.Random:
    # A private generator per pass: sampling never touches the global ``random`` state.
    return random.Random(seed)


def _positive_int(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be a boolean value, but got {name}={value!r}")
    return value


class RandomSampler(Sampler[int]):
    """Indices in random order: a permutation (repeated as needed to reach
    ``num_samples``), or ``num_samples`` draws with ``replacement``. With a ``seed``
    every pass draws the same order (as afnio's does); without one each pass differs.

    Example:
        >>> from afnio_langchain.utils.data import RandomSampler
        >>> sorted(RandomSampler(range(5), seed=0))
        [0, 1, 2, 3, 4]
        >>> list(RandomSampler(range(5), seed=0)) == list(RandomSampler(range(5), seed=0))
        True
    """

    def __init__(
        self,
        data_source: Sized,
        replacement: bool = False,
        num_samples: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.data_source = data_source
        self.replacement = _flag("replacement", replacement)
        self._num_samples = num_samples
        self.seed = seed
        _positive_int("num_samples", self.num_samples)

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        rng = _rng(self.seed)
        if self.replacement:
            yield from (rng.randrange(n) for _ in range(self.num_samples))
            return
        full, rest = divmod(self.num_samples, n)
        for _ in range(full):
            yield from rng.sample(range(n), n)
        yield from rng.sample(range(n), rest)

    def __len__(self) -> int:
        return self.num_samples


class WeightedRandomSampler(Sampler[int]):
    """``num_samples`` indices of ``[0, len(weights))`` drawn with probabilities
    proportional to ``weights`` (weights need not sum to one), with or without
    replacement. Used to balance classes: weight each example by the inverse of its
    class's frequency.

    Example:
        >>> from afnio_langchain.utils.data import WeightedRandomSampler
        >>> draws = list(WeightedRandomSampler([0.0, 1.0, 0.0], 4, seed=1))
        >>> draws
        [1, 1, 1, 1]
        >>> sorted(WeightedRandomSampler([1, 5, 2], 3, replacement=False, seed=0))
        [0, 1, 2]
    """

    def __init__(
        self,
        weights: Sequence[float],
        num_samples: int,
        replacement: bool = True,
        seed: int | None = None,
    ) -> None:
        _positive_int("num_samples", num_samples)
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement should be a boolean value, but got replacement={replacement!r}")
        weights = list(weights)
        if not weights or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 and math.isfinite(w)
            for w in weights
        ):
            raise ValueError("weights must be a non-empty sequence of non-negative numbers")
        if sum(weights) <= 0:
            raise ValueError("weights must not all be zero")
        positive = sum(1 for w in weights if w > 0)
        if not replacement and num_samples > positive:
            raise ValueError(
                f"num_samples ({num_samples}) cannot be greater than the number of indices with a "
                f"positive weight ({positive}) when replacement is False"
            )
        self.weights = weights
        self.num_samples = num_samples
        self.replacement = replacement
        self.seed = seed

    def __iter__(self) -> Iterator[int]:
        rng = _rng(self.seed)
        indices = range(len(self.weights))
        if self.replacement:
            yield from rng.choices(indices, weights=self.weights, k=self.num_samples)
            return
        # Without replacement: order by u ** (1 / w) (Efraimidis and Spirakis), which
        # draws each next index with probability proportional to its weight.
        keys = [(rng.random() ** (1.0 / w), i) for i, w in enumerate(self.weights) if w > 0]
        keys.sort(reverse=True)
        yield from (i for _, i in keys[: self.num_samples])

    def __len__(self) -> int:
        return self.num_samples
