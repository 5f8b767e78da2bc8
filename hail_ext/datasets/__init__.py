"""Data sets shipped inside the package, so that `hail train` runs with no download.

nyc16: New York City crime records of 2016, from the city's open data (NYC OpenData,
https://opendata.cityofnewyork.us/), in the preprocessed form published
with the HAIL paper (Hu et al., CIKM 2021): a "user" is a (community area, location type) pair
and an "item" a (three-hour time slot, offence type) pair, ordered by time. 3,229 users, 440
items, 473,887 interactions. See CREDITS.md beside this file.
"""

from __future__ import annotations

from importlib import resources

from hail_ext.data.readers import read_lines

_FILES = {"nyc16": "nyc16.txt.gz"}


def names() -> tuple:
    """The names of the built-in data sets."""
    return tuple(_FILES)


def pairs(name: str) -> list:
    """The `(user, item)` pairs of a built-in data set."""
    if name not in _FILES:
        raise ValueError(f"no built-in data set {name!r}; the built-in ones are {names()}")
    with resources.as_file(resources.files(__name__) / _FILES[name]) as path:
        return read_lines(path)
