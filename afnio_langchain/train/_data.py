"""Datasets: JSONL and CSV files of examples (one dict per example), read with the line
number of every example so that a malformed row is reported where it is."""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afnio_langchain.loop import TARGET_KEYS, Example

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class DatasetError(ValueError):
    """A dataset file cannot be used; the message names the file and line.

    Attributes:
        path: The file.
        line: The 1-based line number of the bad row (None for whole-file problems).
    """

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Dataset(Sequence[Example]):
    """Examples read from a file, each with the line it starts on.

    It is a read-only sequence of dicts; anything that takes a list of examples takes it.

    Example:
        >>> import pathlib, tempfile
        >>> from afnio_langchain.train import load_dataset
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = pathlib.Path(folder) / "qa.jsonl"
        ...     _ = path.write_text('{"question": "2+2?", "answer": "4"}\\n\\n{"question": "3+3?"}\\n')
        ...     data = load_dataset(path)  # read at once: the folder may go
        >>> len(data), data[0]["answer"], data.line_numbers
        (2, '4', (1, 3))
        >>> data.require(["question", "answer"])
        Traceback (most recent call last):
        ...
        afnio_langchain.train._data.DatasetError: ...qa.jsonl, line 3: missing key 'answer' (the row has: question)
    """

    examples: tuple[Example, ...]
    line_numbers: tuple[int, ...]
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: Any) -> Any:
        return self.examples[index]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    def require(self, keys: Sequence[str]) -> None:
        """Check that every example has ``keys`` (with a non-empty value).

        Raises:
            DatasetError: Naming the first row that lacks one, by line number.
        """
        for line, example in zip(self.line_numbers, self.examples):
            for key in keys:
                if key not in example:
                    have = ", ".join(sorted(example)) or "no fields"
                    raise DatasetError(
                        self.source, f"missing key {key!r} (the row has: {have})", line
                    )
                value = example[key]
                if value is None or (isinstance(value, str) and not value.strip()):
                    raise DatasetError(self.source, f"key {key!r} is empty", line)

    def require_chain_fields(
        self,
        fields: Sequence[str],
        *,
        input_keys: Sequence[str] | None = None,
        target_key: str | None = None,
    ) -> None:
        """Check that every row gives the chain each of ``fields`` (its template
        fields), before anything runs. A row's chain input is its ``input_keys``, or
        every key but ``target_key``.

        Raises:
            DatasetError: Naming the first row that lacks a field, by line number,
                with the row's keys and the likely misspelling.

        Example:
            >>> from afnio_langchain.train import Dataset
            >>> data = Dataset(({"question": "2+2?", "answer": "4"}, {"questoin": "3+3?", "answer": "6"}),
            ...                (1, 2), "qa.jsonl")
            >>> data.require_chain_fields(["question"], target_key="answer")
            Traceback (most recent call last):
            ...
            afnio_langchain.train._data.DatasetError: qa.jsonl, line 2: the chain's input needs 'question' (its template fields: question), but the row gives: questoin (did you mean 'question' for 'questoin'?)
        """
        wanted = list(fields)
        for line, example in zip(self.line_numbers, self.examples):
            given = list(input_keys) if input_keys is not None else [k for k in example if k != target_key]
            missing = [f for f in wanted if f not in given]
            if not missing:
                continue
            hints = []
            for name in missing:
                close = difflib.get_close_matches(name, [k for k in given if k not in wanted], n=1)
                if close:
                    hints.append(f"{name!r} for {close[0]!r}")
            hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
            source = "--input-keys give" if input_keys is not None else "the row gives"
            raise DatasetError(
                self.source,
                f"the chain's input needs {', '.join(map(repr, missing))} (its template fields: "
                f"{', '.join(wanted)}), but {source}: {', '.join(given) or 'nothing'}{hint}",
                line,
            )

    def target_key(self, preferred: str | None = None) -> str:
        """The key holding expected outputs: ``preferred``, else the first of
        :data:`TARGET_KEYS` present in the first example.

        Raises:
            DatasetError: No such key.
        """
        first = self.examples[0] if self.examples else {}
        if preferred is not None:
            if preferred not in first:
                raise DatasetError(
                    self.source,
                    f"no key {preferred!r} in the first example (it has: {', '.join(sorted(first))})",
                    self.line_numbers[0] if self.line_numbers else None,
                )
            return preferred
        for key in TARGET_KEYS:
            if key in first:
                return key
        raise DatasetError(
            self.source,
            f"cannot tell which key holds the expected output (looked for {', '.join(TARGET_KEYS)}; "
            f"the first example has: {', '.join(sorted(first))}); name it with target_key= (--target-key on the command line)",
        )


def load_dataset(path: str | os.PathLike[str], required: Sequence[str] = ()) -> Dataset:
    """Read examples from a ``.jsonl``/``.ndjson`` file (one JSON object per line; blank
    lines are skipped) or a ``.csv`` file (a header row, then one example per row).

    Args:
        path: The file.
        required: Keys every example must have (checked with line numbers).

    Raises:
        DatasetError: The file is missing, empty, of an unknown kind, not UTF-8, or a
            row is malformed (not JSON, not an object, wrong number of CSV fields,
            missing a required key); the message names the line.
    """
    source = str(path)
    file = Path(path)
    if not file.is_file():
        raise DatasetError(source, "no such file")
    suffix = file.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        rows = list(_read_jsonl(file, source))
    elif suffix == ".csv":
        rows = list(_read_csv(file, source))
    else:
        raise DatasetError(
            source, f"unknown dataset format {suffix or '(no suffix)'!r}: use .jsonl or .csv"
        )
    if not rows:
        raise DatasetError(source, "contains no examples")
    dataset = Dataset(
        examples=tuple(example for _, example in rows),
        line_numbers=tuple(line for line, _ in rows),
        source=source,
    )
    dataset.require(required)
    return dataset


def _read_text(file: Path, source: str) -> str:
    """The file as text (UTF-8, with or without a byte-order mark).

    Raises:
        DatasetError: A byte is not UTF-8; names its line and column.
    """
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise DatasetError(
            source,
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
            "save the file as UTF-8",
            line,
        ) from None


def _read_jsonl(file: Path, source: str) -> Iterator[tuple[int, Example]]:
    with io.StringIO(_read_text(file, source), newline=None) as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line.rstrip("\n"))  # a column past the end, not line 2's
            except json.JSONDecodeError as exc:
                raise DatasetError(source, f"not valid JSON ({exc.msg} at column {exc.colno})", number) from None
            if not isinstance(value, dict):
                raise DatasetError(
                    source, f"expected a JSON object, got a JSON {type(value).__name__}", number
                )
            yield number, value


def _read_csv(file: Path, source: str) -> Iterator[tuple[int, Example]]:
    with io.StringIO(_read_text(file, source), newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(source, f"unreadable CSV header ({exc})", 1) from None
        names = [name.strip() for name in header]
        if not any(names) or len(set(names)) != len(names) or not all(names):
            raise DatasetError(
                source, f"the header row must name every column once, got {header}", 1
            )
        start = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DatasetError(source, f"unreadable CSV row ({exc})", start) from None
            line, start = start, reader.line_num + 1
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(names):
                raise DatasetError(
                    source,
                    f"expected {len(names)} fields ({', '.join(names)}), got {len(row)}",
                    line,
                )
            yield line, dict(zip(names, row))


def split_dataset(
    examples: Sequence[Example], val_fraction: float, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Shuffle ``examples`` with ``seed`` and split off ``val_fraction`` of them
    (at least one each side) as a validation set.

    Example:
        >>> from afnio_langchain.train import split_dataset
        >>> train, val = split_dataset([{"x": str(i)} for i in range(10)], 0.3, seed=1)
        >>> len(train), len(val)
        (7, 3)
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if len(examples) < 2:
        raise ValueError("need at least 2 examples to split off a validation set")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return train, val
