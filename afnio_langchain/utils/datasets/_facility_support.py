"""Meta's Facility Support Analyzer dataset (afnio's quickstart data)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from afnio_langchain.autodiff import Variable
from afnio_langchain.utils.data import Dataset

SPLITS = ("train", "val", "test")


class FacilitySupport(Dataset):
    """The Facility Support Analyzer dataset: 200 enterprise emails about facility
    maintenance and support, each labelled with urgency, sentiment and service
    categories, split 33% / 33% / 34% into ``train``, ``val`` and ``test`` (the same
    split every time).

    A sample is ``(message, (urgency, sentiment, categories))``, all Variables
    (``categories`` holds JSON text).

    The data is read from ``<root>/FacilitySupport/raw/dataset.json``. When that file
    is missing and ``download`` is true, it is fetched once from the dataset's public
    repository (``mirrors``) and its checksum checked; nothing else is ever sent.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: The folder holding ``FacilitySupport/raw/dataset.json``.
        download: Fetch the file when it is missing.

    Raises:
        ValueError: An unknown split.
        FileNotFoundError: The file is missing and ``download`` is false.
        RuntimeError: The download failed or its checksum does not match.

    Example:
        >>> import json, pathlib, tempfile
        >>> from afnio_langchain.utils.datasets import FacilitySupport
        >>> rows = [{"fields": {"input": f"The lift is broken ({i})."},
        ...          "answer": json.dumps({"urgency": "high", "sentiment": "negative",
        ...                                "categories": {"maintenance": True}})}
        ...         for i in range(10)]
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     raw = pathlib.Path(folder) / "FacilitySupport" / "raw"
        ...     raw.mkdir(parents=True)
        ...     _ = (raw / "dataset.json").write_text(json.dumps(rows))
        ...     train = FacilitySupport("train", root=folder, download=False)
        >>> message, (urgency, sentiment, categories) = train[0]
        >>> len(train), sentiment.data, sentiment.role
        (3, 'negative', 'output sentiment')
    """

    mirrors = [
        "https://raw.githubusercontent.com/meta-llama/llama-prompt-ops/refs/heads/main/"
        "use-cases/facility-support-analyzer/"
    ]
    resources = [("dataset.json", "530dc66b1b07c9b15b19f08891e9bfa0")]

    def __init__(self, split: str, root: str | os.PathLike[str] = "data", download: bool = True) -> None:
        if split not in SPLITS:
            raise ValueError(f"FacilitySupport: split must be one of {list(SPLITS)}, got {split!r}")
        self.split = split
        self.root = Path(os.path.expanduser(os.fspath(root)))
        path = self.raw_folder / self.resources[0][0]
        if not path.is_file():
            if not download:
                raise FileNotFoundError(f"{path} is missing (pass download=True to fetch it)")
            self._download(path)
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of examples")
        random.Random(0).shuffle(rows)  # a fixed order, so the splits never change
        n_train = n_val = int(len(rows) * 0.33)
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, len(rows))}
        start, end = bounds[split]
        self.data: list[dict[str, Any]] = rows[start:end]

    @property
    def raw_folder(self) -> Path:
        return self.root / type(self).__name__ / "raw"

    def _download(self, path: Path) -> None:
        filename, md5 = self.resources[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for mirror in self.mirrors:
            url = f"{mirror}{filename}"
            try:
                with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - a fixed https URL
                    payload = response.read()
            except OSError as exc:
                errors.append(f"{url}: {exc}")
                continue
            if hashlib.md5(payload).hexdigest() != md5:  # noqa: S324 - a checksum, not security
                errors.append(f"{url}: checksum mismatch")
                continue
            fd, tmp = tempfile.mkstemp(dir=path.parent)
            with os.fdopen(fd, "wb") as out:
                out.write(payload)
            os.replace(tmp, path)
            return
        raise RuntimeError(f"could not download {filename}: " + "; ".join(errors))

    def __getitem__(self, index: int) -> tuple[Variable, tuple[Variable, Variable, Variable]]:
        if not 0 <= index < len(self.data):
            raise IndexError("Index out of range.")
        item = self.data[index]
        answer = json.loads(item["answer"])
        message = Variable(item["fields"]["input"], role="input email or message")
        urgency = Variable(answer.get("urgency", ""), role="output urgency")
        sentiment = Variable(answer.get("sentiment", ""), role="output sentiment")
        categories = Variable(json.dumps(answer.get("categories")), role="output categories")
        return message, (urgency, sentiment, categories)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        split = {"train": "Train", "val": "Validation", "test": "Test"}[self.split]
        return (
            f"Dataset {type(self).__name__}\n    Number of datapoints: {len(self)}\n"
            f"    Root location: {self.root}\n    Split: {split}"
        )
