"""afnio's ``trainer``: :class:`Trainer`, Lightning-style ``fit``/``validate``/``test``
for a :class:`~afnio_langchain.cognitive.Module`, on the package's one training step
(:func:`afnio_langchain.loop.training_step`).

Example:
    >>> from afnio_langchain.trainer import Trainer
    >>> Trainer(max_epochs=3).max_epochs
    3
"""

from afnio_langchain.trainer._trainer import Trainer, batch_size_of

__all__ = ["Trainer", "batch_size_of"]
