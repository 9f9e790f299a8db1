"""Puzzle data: the pieces of a shuffled residual network and its recorded data, loaded safely.

Layout
------
A puzzle folder holds ``historical_data.csv`` and the pieces, either in a ``pieces/`` subfolder or beside
the CSV. ``load_puzzle(folder, pieces=..., data=...)`` overrides either location.

Pieces, one file per piece, named ``piece_<id>.<ext>`` (leading zeros allowed; the id is the integer):

* ``.pth`` / ``.pt``: a zip-format ``torch.save`` of a dict holding exactly two tensors, ``weight`` (out, in)
  and ``bias`` (out,). Loading never unpickles anything but tensors: the archive's pickle is first scanned
  and refused if it names any global outside a short allow-list (``collections.OrderedDict``, torch's tensor
  rebuild functions and float storage classes), and only then is it read with
  ``torch.load(weights_only=True)`` (torch's own restricted unpickler) as a second line of defence.
  Legacy (pre-zip) torch files and bare pickles are refused: they cannot be checked before unpickling.
* ``.safetensors``: tensors ``weight`` and ``bias`` (needs the optional ``safetensors`` package).
* ``.npz``: arrays ``weight`` and ``bias``, read with ``allow_pickle=False``.

A piece with any key besides ``weight`` and ``bias`` is refused (not ignored): extra content means the file is
not what the loader thinks it is (say a whole model's state dict), and guessing would hide that.
Ids must be ``0 .. M-1`` for M pieces, each exactly once (``piece_3.pth`` + ``piece_03.pth``, or
``piece_3.pth`` + ``piece_3.safetensors``, is a duplicate). Other files in the pieces folder are ignored and
listed in ``Puzzle.notes``.

Whole network in one file: ``pieces=`` may name a single ``.pth``/``.pt``/``.safetensors``/``.npz`` file
whose flat mapping has keys ``piece_<id>.weight`` and ``piece_<id>.bias`` (and nothing else) -> tensors.
Without ``pieces=``, a folder with neither ``pieces/`` nor ``piece_<id>.*`` files is searched for one such
file named ``pieces.<ext>`` or ``network.<ext>``.

Data: ``measurement_0 .. measurement_{d-1}`` (no gaps), ``pred`` (or ``pred_0 .. pred_{k-1}``), optional
``true`` (or ``true_<i>``). Other columns are ignored (and noted). Every used cell must be a finite number
that fits float32. Values are parsed with round-trip precision, so float32 values written in shortest form
come back bit-exact.

Roles come from shapes: with d from the CSV, N pieces of shape (h, d) are block inputs, N of shape (d, h)
block outputs, one of shape (k, d) the last layer. Shapes that cannot be told apart (h == d, or k == h) are
refused with a message that says so.

Every problem raises ``PuzzleError`` naming the file (and the row and column, for data), never another
exception type.
"""
from __future__ import annotations

import io
import pickletools
import re
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import pandas as pd
import torch

from .errors import PuzzleError

PIECE_EXTS = ("pth", "pt", "safetensors", "npz")
PIECE_RE = re.compile(r"^piece_(\d{1,9})\.(pth|pt|safetensors|npz)$")
NETWORK_KEY_RE = re.compile(r"^piece_(\d{1,9})\.(weight|bias)$")
NETWORK_FILE_NAMES = tuple(f"{stem}.{ext}" for stem in ("pieces", "network") for ext in PIECE_EXTS)

# Generous caps against a misnamed huge file or a zip bomb; real pieces are tens of KiB.
MAX_FILE_BYTES = 4 << 30
MAX_PICKLE_BYTES = 64 << 20

# The only globals a zip-format torch file of plain dense tensors needs. Storage classes of every dtype
# are harmless and allowed so that a wrong dtype gets a precise message after loading.
_STORAGES = tuple(
    f"{t}Storage" for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
                            "ComplexFloat", "ComplexDouble")
)
SAFE_PICKLE_GLOBALS = frozenset(
    [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter")]
    + [("torch", s) for s in _STORAGES]
)
_STRING_PUSH_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_MEMO_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_REFUSED_OPS = {"OBJ", "EXT1", "EXT2", "EXT4"}


@dataclass
class Puzzle:
    """A loaded puzzle. Piece stacks are ordered by ascending piece id within each role.

    W_in (N, h, d), b_in (N, h): the N block-input pieces (ids ``inp_ids``);
    W_out (N, d, h), b_out (N, d): the N block-output pieces (ids ``out_ids``);
    W_last (k, d), b_last (k,): the last layer (id ``last_id``);
    X (R, d) float32 inputs, pred (R, k) float32 recorded outputs, true (R, k) or None.
    ``notes``: things the loader ignored or adjusted (non-piece files, unused columns); the CLI prints them.
    """

    inp_ids: List[int]
    out_ids: List[int]
    last_id: int
    W_in: torch.Tensor
    b_in: torch.Tensor
    W_out: torch.Tensor
    b_out: torch.Tensor
    W_last: torch.Tensor
    b_last: torch.Tensor
    X: torch.Tensor
    pred: torch.Tensor
    true: Optional[torch.Tensor] = None
    path: Optional[Path] = None
    notes: List[str] = field(default_factory=list)

    @property
    def n_blocks(self) -> int:
        return len(self.inp_ids)

    @property
    def d(self) -> int:
        return int(self.W_in.shape[2])

    @property
    def h(self) -> int:
        return int(self.W_in.shape[1])

    @property
    def k(self) -> int:
        return int(self.W_last.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    def answer(self, order_in: List[int], order_out: List[int]) -> List[int]:
        """Piece ids in execution order (the puzzle's answer format) for blocks given as stack indices."""
        ids: List[int] = []
        for a, b in zip(order_in, order_out):
            ids += [self.inp_ids[a], self.out_ids[b]]
        ids.append(self.last_id)
        return ids


# --------------------------------------------------------------------------------------------- helpers


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if len(line) > 200:
        line = line[:200] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _is_rust_panic(exc: BaseException) -> bool:
    # pyo3 (safetensors) turns a Rust panic into PanicException, a BaseException subclass.
    return type(exc).__name__ == "PanicException"


def _short_list(items: Iterable, limit: int = 8) -> str:
    items = list(items)
    text = ", ".join(str(x) for x in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _read_bytes(path: Path) -> bytes:
    try:
        if not path.is_file():
            raise PuzzleError("is not a regular file", path)
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise PuzzleError(f"file is too large ({size} bytes; limit {MAX_FILE_BYTES})", path)
        return path.read_bytes()
    except OSError as exc:
        raise PuzzleError(f"cannot read file ({exc.strerror or _first_line(exc)})", path) from None


def _open_zip(raw: bytes, path: Path, what: str) -> zipfile.ZipFile:
    """Open and sanity-check a zip held in memory: readable directory, no duplicate names, sane sizes."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
        infos = zf.infolist()
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types on corrupt input
        raise PuzzleError(f"truncated or corrupt {what} (zip: {_first_line(exc)})", path) from None
    names = [i.filename for i in infos]
    dup = sorted(n for n, c in Counter(names).items() if c > 1)
    if dup:
        raise PuzzleError(f"corrupt {what}: zip entry names repeated ({_short_list(dup)})", path)
    total = sum(i.file_size for i in infos)
    if total > MAX_FILE_BYTES:
        raise PuzzleError(f"{what} would unpack to {total} bytes (limit {MAX_FILE_BYTES})", path)
    return zf


# ------------------------------------------------------------------------------------------ torch files


def check_pickle_globals(data: bytes, path: Optional[Path] = None) -> None:
    """Refuse a pickle that references any global outside ``SAFE_PICKLE_GLOBALS`` (or uses opcodes that
    build objects from unchecked classes). Only scans the opcode stream; nothing is unpickled.

    ``STACK_GLOBAL`` takes its names from the stack, so it is accepted only when the two pushes just before
    it are constant strings (directly or fetched from the memo); anything cleverer is refused."""
    memo: Dict[int, Optional[str]] = {}
    pushes: List[Optional[str]] = []  # consecutive pushes right before the current opcode

    def refuse(why: str) -> None:
        raise PuzzleError(f"refused unsafe pickle: {why} (a piece may hold only tensors)", path)

    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, qual = str(arg).partition(" ")
                if (module, qual) not in SAFE_PICKLE_GLOBALS:
                    refuse(f"it references {module}.{qual}")
                pushes = [None]
            elif name == "STACK_GLOBAL":
                if len(pushes) < 2 or pushes[-1] is None or pushes[-2] is None:
                    refuse("STACK_GLOBAL with names that are not constant strings")
                if (pushes[-2], pushes[-1]) not in SAFE_PICKLE_GLOBALS:
                    refuse(f"it references {pushes[-2]}.{pushes[-1]}")
                pushes = [None]
            elif name in _REFUSED_OPS:
                refuse(f"opcode {name}")
            elif name in _STRING_PUSH_OPS:
                pushes.append(arg if isinstance(arg, str) else (arg.decode("latin-1") if isinstance(arg, bytes) else None))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushes[-1] if pushes else None
            elif name in _MEMO_PUT_OPS:
                memo[int(arg)] = pushes[-1] if pushes else None
            elif name in _MEMO_GET_OPS:
                pushes.append(memo.get(int(arg)))
            elif name in ("PROTO", "FRAME"):
                pass
            else:
                pushes = []
    except PuzzleError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError and friends on bad streams
        raise PuzzleError(f"corrupt pickle in torch file ({_first_line(exc)})", path) from None


def _read_torch(raw: bytes, path: Path) -> object:
    if not raw:
        raise PuzzleError("file is empty (0 bytes)", path)
    if not raw.startswith(b"PK\x03\x04"):
        kind = "a bare pickle" if raw[:1] == b"\x80" else "not a zip archive"
        raise PuzzleError(
            f"not a zip-format torch file ({kind}); legacy torch files and bare pickles are refused because "
            "they cannot be checked before unpickling (re-save with torch.save in torch >= 1.6)",
            path,
        )
    zf = _open_zip(raw, path, "torch file")
    pkls = [i for i in zf.infolist() if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise PuzzleError(f"not a torch file: expected one data.pkl in the zip, found {len(pkls)}", path)
    if pkls[0].file_size > MAX_PICKLE_BYTES:
        raise PuzzleError(f"data.pkl is too large ({pkls[0].file_size} bytes)", path)
    try:
        pkl = zf.read(pkls[0])
    except Exception as exc:  # noqa: BLE001
        raise PuzzleError(f"truncated or corrupt torch file (data.pkl: {_first_line(exc)})", path) from None
    check_pickle_globals(pkl, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise PuzzleError(f"cannot load torch file ({_first_line(exc)})", path) from None


def _read_safetensors(raw: bytes, path: Path) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load as st_load
    except ImportError:
        raise PuzzleError(
            "reading .safetensors needs the optional 'safetensors' package (pip install safetensors)", path
        ) from None
    if not raw:
        raise PuzzleError("file is empty (0 bytes)", path)
    try:
        return st_load(raw)
    except Exception as exc:  # noqa: BLE001
        raise PuzzleError(f"cannot load safetensors file ({_first_line(exc)})", path) from None
    except BaseException as exc:
        if _is_rust_panic(exc):
            raise PuzzleError(f"cannot load safetensors file ({_first_line(exc)})", path) from None
        raise


def _read_npz(raw: bytes, path: Path) -> Dict[str, torch.Tensor]:
    if not raw:
        raise PuzzleError("file is empty (0 bytes)", path)
    if not raw.startswith(b"PK"):
        raise PuzzleError("not an .npz (zip) archive", path)
    _open_zip(raw, path, ".npz archive")
    out: Dict[str, torch.Tensor] = {}
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            for key in npz.files:
                arr = npz[key]
                if arr.dtype.kind != "f":
                    raise PuzzleError(f"array {key!r} has dtype {arr.dtype}, expected floating point", path)
                # Copy into native byte order; float16 widens losslessly to float32.
                arr = np.array(arr, dtype=np.float64 if arr.dtype.itemsize > 4 else np.float32)
                out[key] = torch.from_numpy(arr)
    except PuzzleError:
        raise
    except Exception as exc:  # noqa: BLE001 - np.load raises ValueError, OSError, zipfile errors, ...
        raise PuzzleError(f"cannot load .npz file ({_first_line(exc)})", path) from None
    return out


def _read_tensor_file(path: Path) -> Dict[str, torch.Tensor]:
    """A flat ``{str: Tensor}`` mapping from a .pth/.pt, .safetensors or .npz file; anything else is refused."""
    ext = path.suffix.lower().lstrip(".")
    if ext not in PIECE_EXTS:
        raise PuzzleError(f"unsupported file type '.{ext}' (expected one of {', '.join(PIECE_EXTS)})", path)
    raw = _read_bytes(path)
    if ext == "safetensors":
        obj: object = _read_safetensors(raw, path)
    elif ext == "npz":
        obj = _read_npz(raw, path)
    else:
        obj = _read_torch(raw, path)
    if not isinstance(obj, dict):
        raise PuzzleError(f"holds a {type(obj).__name__}, expected a dict of tensors", path)
    for key, val in obj.items():
        if not isinstance(key, str):
            raise PuzzleError(f"has a non-string key {key!r}; expected a dict of named tensors", path)
        if not isinstance(val, torch.Tensor):
            raise PuzzleError(f"value of {key!r} is a {type(val).__name__}, not a tensor", path)
    return obj  # type: ignore[return-value]


def _check_tensor(t: torch.Tensor, path: Path, label: str) -> torch.Tensor:
    if t.layout != torch.strided or t.is_quantized:
        raise PuzzleError(f"{label} is not a plain dense tensor (layout {t.layout})", path)
    if t.is_meta:
        raise PuzzleError(f"{label} is a meta tensor without data", path)
    if not t.dtype.is_floating_point:
        raise PuzzleError(f"{label} has dtype {t.dtype}, expected floating point", path)
    # Own copy in float32: the file may store views sharing one storage, or wider/narrower floats.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = t.detach().to(torch.float32, copy=True).contiguous()
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        v = float(t.detach().to(torch.float64)[idx]) if t.dim() else float(t)
        what = "NaN" if v != v else ("inf" if abs(v) == float("inf") else f"{v!r} (overflows float32)")
        n = int(bad.sum())
        raise PuzzleError(
            f"{label} contains {what} at index {idx if len(idx) != 1 else idx[0]}"
            + (f" ({n} non-finite values in all)" if n > 1 else ""),
            path,
        )
    return out


def _check_layer(w: torch.Tensor, b: torch.Tensor, path: Path, prefix: str = "") -> Dict[str, torch.Tensor]:
    lw, lb = f"{prefix}weight", f"{prefix}bias"
    if w.dim() != 2:
        raise PuzzleError(f"{lw} has shape {tuple(w.shape)}, expected 2 dimensions (out, in)", path)
    if b.dim() != 1:
        raise PuzzleError(f"{lb} has shape {tuple(b.shape)}, expected 1 dimension (out,)", path)
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise PuzzleError(f"{lw} has an empty shape {tuple(w.shape)}", path)
    if b.shape[0] != w.shape[0]:
        raise PuzzleError(
            f"{lw} of shape {tuple(w.shape)} and {lb} of shape {tuple(b.shape)} do not match "
            f"(bias needs {w.shape[0]} entries)",
            path,
        )
    return {"weight": _check_tensor(w, path, lw), "bias": _check_tensor(b, path, lb)}


def _load_piece(path: Path) -> Dict[str, torch.Tensor]:
    """One piece file -> {'weight': (out, in) float32, 'bias': (out,) float32}, fully validated."""
    path = Path(path)
    obj = _read_tensor_file(path)
    keys = set(obj)
    if keys != {"weight", "bias"}:
        missing = sorted({"weight", "bias"} - keys)
        extra = sorted(keys - {"weight", "bias"})
        parts = ([f"missing {_short_list(map(repr, missing))}"] if missing else []) + (
            [f"unexpected key(s) {_short_list(map(repr, extra))}"] if extra else []
        )
        raise PuzzleError(f"a piece must hold exactly 'weight' and 'bias': {'; '.join(parts)}", path)
    return _check_layer(obj["weight"], obj["bias"], path)


def _check_ids(ids: Iterable[int], where: Path, name_of) -> None:
    ids = set(ids)
    m = len(ids)
    missing = sorted(set(range(m)) - ids)
    if missing:
        beyond = sorted(ids - set(range(m)))
        raise PuzzleError(
            f"piece ids must be 0..{m - 1} for {m} pieces, each once: missing {_short_list(missing)}; "
            f"out of range: {_short_list(name_of(i) for i in beyond)}",
            where,
        )


def _load_network_file(path: Path) -> Tuple[Dict[int, Dict[str, torch.Tensor]], Dict[int, str]]:
    """A single file with the whole shuffled network: keys piece_<id>.weight / piece_<id>.bias."""
    tensors = _read_tensor_file(path)
    groups: Dict[int, Dict[str, Tuple[str, torch.Tensor]]] = {}
    unknown = []
    for key, t in tensors.items():
        m = NETWORK_KEY_RE.match(key)
        if not m:
            unknown.append(repr(key))
            continue
        i, part = int(m.group(1)), m.group(2)
        g = groups.setdefault(i, {})
        if part in g:
            raise PuzzleError(f"duplicate piece id {i}: keys {g[part][0]!r} and {key!r}", path)
        g[part] = (key, t)
    if unknown:
        raise PuzzleError(
            f"unexpected key(s) {_short_list(unknown)}; a network file maps only piece_<id>.weight and "
            "piece_<id>.bias to tensors",
            path,
        )
    if not groups:
        raise PuzzleError("no pieces (no piece_<id>.weight / piece_<id>.bias keys)", path)
    for i, g in sorted(groups.items()):
        if set(g) != {"weight", "bias"}:
            have = next(iter(g))
            raise PuzzleError(f"piece {i} has a {have} ({g[have][0]!r}) but no {'bias' if have == 'weight' else 'weight'}", path)
    _check_ids(groups, path, lambda i: f"piece_{i}")
    found = {i: _check_layer(g["weight"][1], g["bias"][1], path, f"piece_{i}.") for i, g in groups.items()}
    return found, {i: f"{path.name}[piece_{i}]" for i in found}


def _scan_piece_folder(folder: Path, notes: List[str], skip: Iterable[str] = ()) -> Dict[int, Path]:
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise PuzzleError(f"cannot list pieces folder ({exc.strerror or _first_line(exc)})", folder) from None
    skip = set(skip)
    by_id: Dict[int, Path] = {}
    ignored = []
    for f in entries:
        m = PIECE_RE.match(f.name)
        if not m:
            if f.name not in skip:
                ignored.append(f.name + ("/" if f.is_dir() else ""))
            continue
        i = int(m.group(1))
        if i in by_id:
            raise PuzzleError(f"duplicate piece id {i}: {by_id[i].name} and {f.name}", f)
        by_id[i] = f
    if ignored:
        notes.append(f"ignored {len(ignored)} non-piece file(s) in {folder}: {_short_list(ignored)}")
    if not by_id:
        extra = f"; it holds only {_short_list(ignored)}" if ignored else " (the folder is empty)"
        raise PuzzleError(f"no piece files (piece_<id>.pth, .pt, .safetensors or .npz){extra}", folder)
    _check_ids(by_id, folder, lambda i: by_id[i].name)
    return by_id


# ----------------------------------------------------------------------------------------------- CSV


def _column_values(df: pd.DataFrame, col: str, data: Path) -> None:
    """Raise PuzzleError at the first non-numeric cell of ``col`` (row and line named)."""
    s = df[col]
    if s.dtype.kind in "fiu":
        return
    for r, v in enumerate(s.to_numpy(dtype=object)):
        if v is None or (isinstance(v, float) and v != v):
            continue
        ok = not isinstance(v, (bool, np.bool_))
        if ok:
            try:
                float(v)
            except (TypeError, ValueError):
                ok = False
        if not ok:
            shown = str(v) if len(str(v)) <= 40 else str(v)[:40] + "..."
            raise PuzzleError(f"non-numeric value {shown!r} in column {col}, row {r} (line {r + 2})", data)


def _numeric_block(df: pd.DataFrame, cols: List[str], data: Path) -> np.ndarray:
    """(R, len(cols)) float32; every cell must be a finite number that fits float32."""
    for c in cols:
        _column_values(df, c, data)
    if all(df[c].dtype.kind in "fiu" for c in cols):
        x64 = df[cols].to_numpy(dtype=np.float64)
    else:
        x64 = np.column_stack([pd.to_numeric(df[c], errors="raise").to_numpy(dtype=np.float64) for c in cols])
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


def _read_csv(data: Path, notes: Optional[List[str]] = None):
    """Read and validate the data CSV -> (X (R, d), pred (R, k), true (R, k) or None, data path)."""
    notes = notes if notes is not None else []
    data = Path(data)
    try:
        size = data.stat().st_size
    except OSError as exc:
        raise PuzzleError(f"cannot read data CSV ({exc.strerror or _first_line(exc)})", data) from None
    if size == 0:
        raise PuzzleError("data CSV is empty (0 bytes)", data)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*float_precision.*")  # deprecated in pandas 3, still honoured
            warnings.simplefilter("error", pd.errors.ParserWarning)  # e.g. more fields than header names
            df = pd.read_csv(data, float_precision="round_trip", index_col=False, skip_blank_lines=False)
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

    X = torch.from_numpy(_numeric_block(df, meas, data))
    pred = torch.from_numpy(_numeric_block(df, preds, data))
    true = torch.from_numpy(_numeric_block(df, trues, data)) if trues else None
    return X, pred, true, data


# ------------------------------------------------------------------------------------------- assembly


def _structures(shapes: Dict[tuple, List[int]]) -> List[Tuple[int, int, int, str]]:
    """Every (d, h, k, kind) under which the shapes form N inputs (h, d) + N outputs (d, h) + one last
    (k, d), N >= 1. kind: 'ok', 'dh' (h == d: inputs and outputs alike), 'kh' (k == h: last like inputs)."""
    found = []
    dims = sorted({x for s in shapes for x in s})
    count = {s: len(v) for s, v in shapes.items()}
    for d in dims:
        for h in dims:
            if h == d:
                n_dd = count.get((d, d), 0)
                rest = {s: c for s, c in count.items() if s != (d, d)}
                if not rest and n_dd >= 3 and n_dd % 2 == 1:
                    found.append((d, d, d, "dh"))
                elif n_dd >= 2 and n_dd % 2 == 0 and len(rest) == 1:
                    (s, c), = rest.items()
                    if c == 1 and s[1] == d:
                        found.append((d, d, s[0], "dh"))
                continue
            a, b = count.get((h, d), 0), count.get((d, h), 0)
            rest = {s: c for s, c in count.items() if s not in ((h, d), (d, h))}
            if b >= 1 and a == b and len(rest) == 1:
                (s, c), = rest.items()
                if c == 1 and s[1] == d:
                    found.append((d, h, s[0], "ok"))
            elif b >= 1 and a == b + 1 and not rest:
                found.append((d, h, h, "kh"))
    return found


def _describe_shapes(shapes: Dict[tuple, List[int]]) -> str:
    return ", ".join(f"{len(v)} of shape {s}" for s, v in sorted(shapes.items(), key=lambda kv: (-len(kv[1]), kv[0])))


def _mismatch_parts(shapes: Dict[tuple, List[int]], d: int, k: int, name_of) -> List[str]:
    """Say which counts are off, reading shapes with the CSV's d and k."""
    cand: Counter = Counter()
    for (r, c), ids in shapes.items():
        if c == d and r != d and (r, c) != (k, d):
            cand[r] += len(ids)
        if r == d and c != d:
            cand[c] += len(ids)
    parts: List[str] = []
    used = {(k, d)}
    if cand:
        h = cand.most_common(1)[0][0]
        a, b = len(shapes.get((h, d), [])), len(shapes.get((d, h), []))
        used |= {(h, d), (d, h)}
        if a != b:
            parts.append(f"{a} pieces of shape ({h}, {d}) (block input) but {b} of shape ({d}, {h}) (block output)")
    else:
        parts.append(f"no block pieces of shape (h, {d}) / ({d}, h)")
    n_last = len(shapes.get((k, d), []))
    if n_last != 1:
        parts.append(f"{n_last} pieces of shape ({k}, {d}) (last layer), expected exactly 1")
    for s, ids in sorted(shapes.items()):
        if s not in used:
            parts.append(f"{len(ids)} piece(s) of shape {s} fit no role ({_short_list((name_of(i) for i in ids), 4)})")
    return parts


def assemble(
    found: Dict[int, Dict[str, torch.Tensor]],
    csv,
    path=None,
    source=None,
    files: Optional[Dict[int, str]] = None,
) -> Puzzle:
    """Sort pieces into roles by shape and build a Puzzle (used by every loader).

    ``found``: piece id -> {'weight', 'bias'}; ``csv``: (X (R, d), pred (R, k), true or None, data path);
    ``source``: where the pieces came from (for messages); ``files``: piece id -> file name (for messages)."""
    X, pred, true, data = csv
    name_of = (lambda i: files.get(i, f"piece {i}")) if files else (lambda i: f"piece {i}")
    if not found:
        raise PuzzleError("no pieces", source)
    shapes: Dict[tuple, List[int]] = {}
    for i, p in sorted(found.items()):
        shapes.setdefault(tuple(int(x) for x in p["weight"].shape), []).append(i)
    d, k = int(X.shape[1]), int(pred.shape[1])
    structs = _structures(shapes)
    match = [s for s in structs if s[0] == d and s[2] == k]
    if not match:
        if structs:
            sd, sh, sk, _ = next((s for s in structs if s[0] == d), structs[0])
            if sd != d:
                raise PuzzleError(
                    f"CSV has {d} measurement column(s) but the pieces are for d={sd} (pieces: {_describe_shapes(shapes)})",
                    data,
                )
            last = [i for i in shapes.get((sk, sd), [])]
            raise PuzzleError(
                f"CSV has {k} pred column(s) but the last layer ({_short_list((name_of(i) for i in last), 2)}, "
                f"shape ({sk}, {sd})) has {sk} output(s)",
                data,
            )
        parts = _mismatch_parts(shapes, d, k, name_of)
        raise PuzzleError(
            f"pieces do not form N block inputs (h, {d}) + N block outputs ({d}, h) + one last layer ({k}, {d}) "
            f"(d from the CSV's measurement columns, k from its pred columns): " + "; ".join(parts),
            source,
        )
    d, h, k, kind = match[0]
    n = len(shapes.get((h, d), [])) - (1 if kind == "kh" else 0)
    if kind == "dh":
        n = len(shapes[(d, d)]) // 2
        raise PuzzleError(
            f"ambiguous shapes: h == d == {d}, so all {2 * n} block pieces have weight shape ({d}, {d}) and block "
            "inputs cannot be told from block outputs by shape; this loader refuses such puzzles",
            source,
        )
    if kind == "kh":
        raise PuzzleError(
            f"ambiguous shapes: k == h == {h}, so the last layer has the same shape ({h}, {d}) as the {n} block "
            f"inputs and which of those {n + 1} pieces is the last layer cannot be told by shape; this loader "
            "refuses such puzzles",
            source,
        )
    inp = sorted(shapes[(h, d)])
    out = sorted(shapes[(d, h)])
    last = shapes[(k, d)]
    st = lambda ids, key: torch.stack([found[i][key] for i in ids])  # noqa: E731
    return Puzzle(
        inp_ids=inp, out_ids=out, last_id=last[0],
        W_in=st(inp, "weight"), b_in=st(inp, "bias"), W_out=st(out, "weight"), b_out=st(out, "bias"),
        W_last=found[last[0]]["weight"], b_last=found[last[0]]["bias"],
        X=X, pred=pred, true=true, path=Path(path) if path is not None else None,
    )


# ---------------------------------------------------------------------------------------------- entry


def _default_pieces(root: Path) -> Path:
    sub = root / "pieces"
    if sub.is_dir():
        return sub
    try:
        names = {p.name for p in root.iterdir()}
    except OSError:
        return root
    if not any(PIECE_RE.match(n) for n in names):
        nets = [n for n in NETWORK_FILE_NAMES if n in names]
        if len(nets) == 1:
            return root / nets[0]
    return root


def load_puzzle(
    path: Union[str, Path, None] = None,
    *,
    pieces: Union[str, Path, None] = None,
    data: Union[str, Path, None] = None,
) -> Puzzle:
    """Load a puzzle: ``historical_data.csv`` plus the pieces (``pieces/`` or beside the CSV; or one network
    file). ``pieces=`` (folder, or a single network file) and ``data=`` (CSV file) override the defaults.
    See the module docstring for the accepted formats. Raises PuzzleError (with ``.path``) on any problem."""
    notes: List[str] = []
    root = Path(path) if path is not None else None
    if root is not None:
        if not root.exists():
            raise PuzzleError("puzzle folder does not exist", root)
        if not root.is_dir():
            raise PuzzleError("puzzle path is not a folder", root)
    if data is None:
        if root is None:
            raise PuzzleError("no puzzle folder and no data CSV given")
        data = root / "historical_data.csv"
    data = Path(data)
    if root is None:
        root = data.parent
    if not data.exists():
        raise PuzzleError("data CSV does not exist", data)
    if not data.is_file():
        raise PuzzleError("data CSV is not a file", data)
    pieces = _default_pieces(root) if pieces is None else Path(pieces)
    if not pieces.exists():
        raise PuzzleError("pieces folder or file does not exist", pieces)

    if pieces.is_dir():
        skip = [data.name] if data.parent.resolve() == pieces.resolve() else []
        by_id = _scan_piece_folder(pieces, notes, skip)
        found = {i: _load_piece(f) for i, f in by_id.items()}
        files = {i: f.name for i, f in by_id.items()}
    else:
        found, files = _load_network_file(pieces)
    csv = _read_csv(data, notes)
    puzzle = assemble(found, csv, path=root, source=pieces, files=files)
    puzzle.notes.extend(notes)
    return puzzle
