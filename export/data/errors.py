"""Errors of the data layer; every one is a :class:`DataError` with a message meant for users."""

from __future__ import annotations


class DataError(ValueError):
    """Base class: a data set is missing, corrupt, malformed or not prepared."""


class DatasetMissingError(DataError):
    """A data set folder or file does not exist."""


class DatasetCorruptError(DataError):
    """A file exists but its bytes are wrong (checksum, truncated, bad header)."""


class DataFormatError(DataError):
    """A file or folder does not have the expected structure."""


class NotPreparedError(DataError):
    """The prepared data folder is missing or incomplete."""
