"""afnio's ``trainer``: :class:`Trainer`, Lightning-style ``fit``/``validate``/``test``
for a :class:`~afnio_langchain.cognitive.Module`, on the package's training loop
(:func:`afnio_langchain.train.fit`).

Example:
    >>> from afnio_langchain.trainer import Trainer
    >>> Trainer(max_epochs=3).max_epochs
    3
"""

from afnio_langchain.trainer._trainer import Trainer, batch_size_of

__all__ = ["Trainer", "batch_size_of"]
