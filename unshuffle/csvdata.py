"""The data CSV: ``measurement_0 .. measurement_{d-1}`` (no gaps), ``pred`` (or ``pred_0 .. pred_{k-1}``),
optional ``true`` (or ``true_<i>``). Other columns are ignored (and noted). Every used cell must be a finite
number that fits float32. Values are parsed with round-trip precision (the correctly rounded float64, then
float32), so float32 values written in shortest form come back bit-exact.

Two readers, one result: the C++ core's strict parser takes the common, well-formed file (a plain header,
every field a plain decimal number, the same number of fields on every line); anything else - quotes,
blank lines, text, NaN, values pandas would read through another path - goes to pandas, which also words
every error (file, row, line and column). pandas (~0.25 s to import) is loaded only then. Tests hold the
two to identical arrays and notes.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .errors import PuzzleError
from .tensorfiles import _first_line, _short_list

_PLAIN_HEADER = re.compile(rb"[A-Za-z0-9_]+(?:,[A-Za-z0-9_]+)*")


def _select_columns(cols: List[str], data: Path, notes: List[str]) -> Tuple[List[str], List[str], List[str]]:
    """(measurement, pred, true) column names from the header; notes what is ignored."""
    meas = _indexed_columns(cols, "measurement", data)
    if not meas:
        raise PuzzleError(f"no measurement_<i> columns (header: {_short_list(cols)})", data)
    preds = _indexed_columns(cols, "pred", data)
    if "pred" in cols:
        if preds:
            raise PuzzleError(f"both 'pred' and {preds[0]!r} columns; use one form", data)
        preds = ["pred"]
    if not preds:
        raise PuzzleError(f"no 'pred' column (or pred_0..pred_<k-1>) (header: {_short_list(cols)})", data)
    trues = _indexed_columns(cols, "true", data)
    if "true" in cols:
        trues = ["true"] if not trues else trues + ["true"]
    if trues and len(trues) != len(preds):
        notes.append(f"{data}: ignored true column(s) {_short_list(trues)}: {len(trues)} of them for {len(preds)} pred column(s)")
        trues = []
    other = [c for c in cols if c not in set(meas) | set(preds) | set(trues)]
    if other:
        notes.append(f"{data}: ignored column(s) {_short_list(other)}")
    return meas, preds, trues


def _read_raw(data: Path) -> bytes:
    try:
        raw = data.read_bytes()
    except OSError as exc:
        raise PuzzleError(f"cannot read data CSV ({exc.strerror or _first_line(exc)})", data) from None
    if not raw:
        raise PuzzleError("data CSV is empty (0 bytes)", data)
    return raw


def _read_fast(raw: bytes, data: Path, notes: List[str]):
    """The strict C++ parse, or None when the file is outside its form (or the core is not built)."""
    try:
        from . import _core
    except ImportError:
        return None
    nl = raw.find(b"\n")
    if nl < 0:
        return None
    header = raw[: nl - 1] if nl > 0 and raw[nl - 1 : nl] == b"\r" else raw[:nl]
    if not _PLAIN_HEADER.fullmatch(header):
        return None
    cols = header.decode("ascii").split(",")
    if len(set(cols)) != len(cols):
        return None
    values, info = _core.parse_csv(raw, nl + 1, len(cols))
    if values is None or values.shape[0] == 0:
        return None
    meas, preds, trues = _select_columns(cols, data, notes)
    at = {c: i for i, c in enumerate(cols)}
    block = lambda names: np.ascontiguousarray(values[:, [at[c] for c in names]])  # noqa: E731
    return block(meas), block(preds), (block(trues) if trues else None), data


def read_csv(data: Path, notes: Optional[List[str]] = None, fast: bool = True):
    """Read and validate the data CSV -> (X (R, d), pred (R, k), true (R, k) or None, data path), float32
    numpy arrays. ``fast=False`` always uses the pandas reader (the reference the fast one is tested against)."""
    notes = notes if notes is not None else []
    data = Path(data)
    raw = _read_raw(data)
    if fast:
        got = _read_fast(raw, data, notes)
        if got is not None:
            return got
    return _read_pandas(raw, data, notes)


def _read_pandas(raw: bytes, data: Path, notes: List[str]):
    """The general reader (pandas): any CSV pandas can read, and the precise error for any other."""
    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*float_precision.*")  # deprecated in pandas 3, still honoured
            warnings.simplefilter("error", pd.errors.ParserWarning)  # e.g. more fields than header names
            df = pd.read_csv(io.BytesIO(raw), float_precision="round_trip", index_col=False, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise PuzzleError("data CSV has no header line", data) from None
    except UnicodeDecodeError as exc:
        raise PuzzleError(f"data CSV is not UTF-8 text (bad byte at offset {exc.start})", data) from None
    except pd.errors.ParserWarning as exc:
        raise PuzzleError(f"malformed CSV: row fields do not match the header ({_first_line(exc)})", data) from None
    except Exception as exc:  # noqa: BLE001 - the parser raises several types on malformed text
        raise PuzzleError(f"malformed CSV ({_first_line(exc)})", data) from None

    cols = [str(c) for c in df.columns]
    df.columns = cols
    for c in cols:  # pandas renames a repeated header "a" to "a.1"
        m = re.fullmatch(r"(.+)\.(\d+)", c)
        if m and m.group(1) in cols:
            raise PuzzleError(f"duplicate column {m.group(1)!r} in the header", data)
    meas, preds, trues = _select_columns(cols, data, notes)

    # Blank lines are kept as all-NaN rows so row numbers match lines; drop trailing ones only.
    n = len(df)
    used = meas + preds + trues
    blank = df[used].isna().all(axis=1).to_numpy()
    while n and blank[n - 1]:
        n -= 1
    if n < len(df):
        notes.append(f"{data}: ignored {len(df) - n} empty line(s) at the end")
        df = df.iloc[:n]
    if n == 0:
        raise PuzzleError("data CSV has a header but no data rows", data)

    X = _numeric_block(df, meas, data)
    pred = _numeric_block(df, preds, data)
    true = _numeric_block(df, trues, data) if trues else None
    return X, pred, true, data


# ------------------------------------------------------------------------------------------- checks


def _column_values(df, col: str, data: Path, strict: bool = False) -> None:
    """Raise PuzzleError at the first non-numeric cell of ``col`` (row and line named). ``strict``: also
    cells that Python's float() takes but pandas' parser does not (e.g. '1_0')."""
    s = df[col]
    if s.dtype.kind in "fiu":
        return
    if strict:
        import pandas as pd
    for r, v in enumerate(s.to_numpy(dtype=object)):
        if v is None or (isinstance(v, float) and v != v):
            continue
        ok = not isinstance(v, (bool, np.bool_))
        if ok:
            try:
                float(v)
                if strict:
                    pd.to_numeric(v)
            except (TypeError, ValueError):
                ok = False
        if not ok:
            shown = str(v) if len(str(v)) <= 40 else str(v)[:40] + "..."
            raise PuzzleError(f"non-numeric value {shown!r} in column {col}, row {r} (line {r + 2})", data)


def _numeric_block(df, cols: List[str], data: Path) -> np.ndarray:
    """(R, len(cols)) float32; every cell must be a finite number that fits float32."""
    for c in cols:
        _column_values(df, c, data)
    if all(df[c].dtype.kind in "fiu" for c in cols):
        x64 = df[cols].to_numpy(dtype=np.float64)
    else:
        import pandas as pd

        parsed = []
        for c in cols:
            try:
                parsed.append(pd.to_numeric(df[c], errors="raise").to_numpy(dtype=np.float64))
            except (TypeError, ValueError):
                _column_values(df, c, data, strict=True)  # names the cell pandas could not parse
                raise PuzzleError(f"non-numeric values in column {c}", data) from None
        x64 = np.column_stack(parsed)
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x64.astype(np.float32)
    bad = ~np.isfinite(x32)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        v = x64[r, c]
        what = "empty or NaN cell" if v != v else ("infinite value" if np.isinf(v) else f"value {float(v)!r} (overflows float32)")
        n = int(bad.sum())
        more = f"; {n - 1} more non-finite cell(s)" if n > 1 else ""
        raise PuzzleError(f"{what} in column {cols[c]}, row {r} (line {r + 2}){more}", data)
    return x32


def _indexed_columns(cols: List[str], stem: str, data: Path) -> List[str]:
    """Columns ``<stem>_<i>`` ordered by i; refuses duplicates (by value) and gaps."""
    by_i: Dict[int, str] = {}
    for c in cols:
        m = re.fullmatch(rf"{stem}_(\d{{1,9}})", c)
        if m:
            i = int(m.group(1))
            if i in by_i:
                raise PuzzleError(f"duplicate column index: {by_i[i]} and {c}", data)
            by_i[i] = c
    if by_i:
        missing = sorted(set(range(max(by_i) + 1)) - set(by_i))
        if missing:
            raise PuzzleError(
                f"{stem} columns have gaps: missing {_short_list(f'{stem}_{i}' for i in missing)} "
                f"(have {len(by_i)} columns up to {stem}_{max(by_i)})",
                data,
            )
    return [by_i[i] for i in sorted(by_i)]
