"""Readers for the interaction logs users have: `user item` lines, RecBole `.inter`, CSV.

Each reader returns the log as one `(user, item)` pair per interaction, in chronological order
within each user, with ids kept as the strings of the file (remapping comes later, in
:mod:`hail_ext.data.prepare`). A malformed file raises :class:`DataFormatError` naming the file,
the line and what was expected.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections.abc import Iterator
from pathlib import Path

FORMATS = ("lines", "inter", "csv")


class DataFormatError(ValueError):
    """A data file that does not hold what its format promises."""

    def __init__(self, path, line: int | None, expected: str) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {expected}")
        self.path, self.line = str(path), line


def guess_format(path: str | Path) -> str:
    """The format of a file from its name: `.inter` -> "inter", `.csv` -> "csv", else "lines"."""
    name = str(path).lower().removesuffix(".gz")
    if name.endswith(".inter"):
        return "inter"
    if name.endswith(".csv"):
        return "csv"
    return "lines"


def read_interactions(path: str | Path, fmt: str | None = None, **csv_columns) -> list:
    """Read `path` in format `fmt` (guessed from the name when None) into `(user, item)` pairs.
    `csv_columns` (user_col, item_col, time_col) name the columns of a CSV file; other formats
    ignore them."""
    fmt = guess_format(path) if fmt is None else fmt
    if fmt == "csv":
        return read_csv(path, **csv_columns)
    if fmt == "lines":
        return read_lines(path)
    if fmt == "inter":
        return read_inter(path)
    raise ValueError(f"fmt must be one of {FORMATS} or None, got {fmt!r}")


# A whole file of well-formed `user item` lines, matched in one pass of the regex engine.
_LINES = re.compile(r"(?:[ \t]*\d+[ \t]+\d+[ \t]*\r?\n|[ \t]*\r?\n)*(?:[ \t]*\d+[ \t]+\d+[ \t]*)?")


def read_lines(path: str | Path) -> list:
    """`user item` per line, whitespace separated, integer ids, chronological per user."""
    with _open(path) as handle:
        try:
            text = handle.read()
        except UnicodeDecodeError as error:
            raise DataFormatError(path, None, f"UTF-8 text ({error})") from None
    if _LINES.fullmatch(text):
        tokens = text.split()
        return _non_empty(path, list(zip(tokens[0::2], tokens[1::2], strict=True)))
    # Only a malformed file walks line by line, to say where it goes wrong.
    pairs = []
    for number, line in _numbered_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataFormatError(path, number, f"2 fields 'user item', got {len(fields)}")
        for name, value in zip(("user", "item"), fields, strict=True):
            if not value.isdigit():
                raise DataFormatError(path, number, f"an integer {name} id, got {value!r}")
        pairs.append((fields[0], fields[1]))
    return _non_empty(path, pairs)


def read_inter(path: str | Path) -> list:
    """A RecBole atomic file: a tab-separated header `user_id:token item_id:token
    timestamp:float` (any order, more columns allowed), then one interaction per line. Rows are
    sorted by timestamp within each user (ties keep file order)."""
    lines = _numbered_lines(path)
    header = next(lines, None)
    if header is None:
        raise DataFormatError(path, None, "a header line, got an empty file")
    names = [field.split(":")[0] for field in header[1].rstrip("\n").split("\t")]
    wanted = ("user_id", "item_id", "timestamp")
    missing = [name for name in wanted if name not in names]
    if missing:
        raise DataFormatError(
            path,
            header[0],
            f"header columns {', '.join(w + ':...' for w in wanted)}; "
            f"missing {missing}, found {names}",
        )
    columns = [names.index(name) for name in wanted]
    rows = []
    for number, line in lines:
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        rows.append(_row(path, number, fields, columns, wanted))
    return _sorted_by_time(_non_empty(path, rows))


def read_csv(
    path: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str = "timestamp",
) -> list:
    """A comma-separated file whose header names the user, item and timestamp columns. Rows are
    sorted by timestamp within each user (ties keep file order)."""
    with _open(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataFormatError(path, None, "a header line, got an empty file")
        wanted = (user_col, item_col, time_col)
        names = [name.strip() for name in header]
        missing = [name for name in wanted if name not in names]
        if missing:
            raise DataFormatError(
                path, 1, f"header columns {list(wanted)}; missing {missing}, found {names}"
            )
        columns = [names.index(name) for name in wanted]
        rows = []
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue
            rows.append(_row(path, reader.line_num, fields, columns, wanted))
    return _sorted_by_time(_non_empty(path, rows))


def _row(path, number: int, fields: list, columns: list, names: tuple) -> tuple:
    if len(fields) <= max(columns):
        raise DataFormatError(
            path,
            number,
            f"at least {max(columns) + 1} columns ({', '.join(names)}), got {len(fields)}",
        )
    user, item, time = (fields[c].strip() for c in columns)
    for name, value in ((names[0], user), (names[1], item)):
        if not value:
            raise DataFormatError(path, number, f"a non-empty {name}")
    try:
        stamp = float(time)
    except ValueError:
        stamp = math.nan
    if not math.isfinite(stamp):
        raise DataFormatError(path, number, f"a finite number for {names[2]}, got {time!r}")
    return user, item, stamp


def _sorted_by_time(rows: list) -> list:
    order: dict[str, list] = {}
    for user, item, stamp in rows:
        order.setdefault(user, []).append((stamp, item))
    pairs = []
    for user, events in order.items():
        events.sort(key=lambda event: event[0])  # stable: equal times keep file order
        pairs.extend((user, item) for _, item in events)
    return pairs


def _non_empty(path, pairs: list) -> list:
    if not pairs:
        raise DataFormatError(path, None, "at least one interaction, got none")
    return pairs


def _open(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    with _open(path) as handle:
        try:
            yield from enumerate(handle, start=1)
        except UnicodeDecodeError as error:
            raise DataFormatError(path, None, f"UTF-8 text ({error})") from None
