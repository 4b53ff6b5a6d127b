"""Read a shop's table (CSV or Parquet) into typed columns, with the row's place for messages.

CSV is read as text (ids such as ``007`` stay as written; an Excel byte-order mark is dropped);
a further column is numeric when every non-empty value is a number. Parquet keeps its own types.
Messages name CSV rows by file line (header = line 1, one line per row) and Parquet rows by number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from couturier.export.data.errors import DataFormatError, DatasetMissingError

SUFFIXES = {".csv": "CSV", ".parquet": "Parquet", ".pq": "Parquet"}


@dataclass
class Table:
    """A table file's rows; ``frame`` columns keep the file's types (text for CSV)."""

    path: Path
    kind: str  # "CSV" or "Parquet"
    frame: pd.DataFrame

    def __len__(self) -> int:
        return len(self.frame)

    def where(self, row: int) -> str:
        """``products.csv line 4`` / ``products.parquet row 3`` for 0-based data row ``row``."""
        return f"{self.path.name} line {row + 2}" if self.kind == "CSV" else f"{self.path.name} row {row + 1}"

    def text(self, column: str) -> list[str]:
        """The column as stripped text ('' when empty); integral numbers without a decimal point."""
        return [_as_text(value) for value in self.frame[column].tolist()]

    def is_numeric(self, column: str) -> bool:
        series = self.frame[column]
        if self.kind != "CSV":
            return bool(pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series))
        text = series.str.strip()
        filled = text[text != ""]
        return len(filled) > 0 and bool(pd.to_numeric(filled, errors="coerce").notna().all())

    def numbers(self, column: str) -> np.ndarray:
        """A numeric column as float64, NaN where empty."""
        series = self.frame[column]
        if self.kind == "CSV":
            series = series.str.strip().replace("", np.nan)
        return pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def unix_seconds(self, column: str) -> np.ndarray:
        """Integers (unix seconds) or ISO 8601 dates (naive = UTC) -> int64 seconds; -1 where unusable."""
        series = self.frame[column]
        if pd.api.types.is_datetime64_any_dtype(series):
            dates = pd.to_datetime(series, utc=True)
            return _seconds(dates)
        numbers = (
            self.numbers(column)
            if self.kind == "CSV"
            else pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        )
        out = np.where(np.isfinite(numbers), np.floor(np.nan_to_num(numbers)), -1).astype(np.int64)
        out[np.isfinite(numbers) & (numbers < 0)] = -1
        text_rows = np.flatnonzero(~np.isfinite(numbers))
        if len(text_rows):
            texts = pd.Series([_as_text(v) for v in series.iloc[text_rows].tolist()], dtype=object)
            dates = pd.to_datetime(texts.replace("", None), utc=True, format="ISO8601", errors="coerce")
            out[text_rows] = _seconds(dates)
        return out


def _seconds(dates: pd.Series) -> np.ndarray:
    valid = dates.notna().to_numpy()
    seconds = np.full(len(dates), -1, dtype=np.int64)
    if valid.any():
        epoch = pd.Timestamp(0, tz="UTC")
        seconds[valid] = ((dates[valid] - epoch) // pd.Timedelta(seconds=1)).to_numpy(dtype=np.int64)
    return seconds


def _as_text(value: Any) -> str:
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace").strip()
    return str(value).strip()


def read_table(path: Path | str, required: tuple[str, ...], what: str) -> Table:
    """Read ``path`` (.csv, .parquet or .pq); DataFormatError naming missing columns or unreadable bytes."""
    file = Path(path)
    kind = SUFFIXES.get(file.suffix.lower())
    if kind is None:
        raise DataFormatError(f"{file}: a {what} file must be .csv or .parquet, got {file.suffix or 'no suffix'}")
    if not file.is_file():
        raise DatasetMissingError(f"{what} file {file} does not exist")
    try:
        if kind == "CSV":
            frame = pd.read_csv(file, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
        else:
            frame = pd.read_parquet(file)
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise DataFormatError(f"{file}: not a readable {kind} file ({type(exc).__name__}: {exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataFormatError(
            f"{file}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; a {what} file needs "
            f"{', '.join(required)} (found: {', '.join(frame.columns) or 'no columns'})"
        )
    if frame.columns.duplicated().any():
        raise DataFormatError(f"{file}: column {frame.columns[frame.columns.duplicated()][0]!r} appears twice")
    if frame.empty:
        raise DataFormatError(f"{file}: the {what} file has no rows")
    return Table(file, kind, frame.reset_index(drop=True))
