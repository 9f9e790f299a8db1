"""Piece files: the safe pickle scan and the tensor-file readers (.pth/.pt, .safetensors, .npz).

Pieces, one file per piece, named ``piece_<id>.<ext>`` (leading zeros allowed; the id is the integer):

* ``.pth`` / ``.pt``: a zip-format ``torch.save`` of a dict holding exactly two tensors, ``weight`` (out, in)
  and ``bias`` (out,). Loading never unpickles anything but tensors, and does not need torch: the archive's
  pickle is first scanned and refused if it names any global outside a short allow-list
  (``collections.OrderedDict``, torch's tensor rebuild functions and storage classes), and only then read
  by a restricted unpickler (second line of defence) whose only globals are stand-ins for those same names:
  they rebuild each tensor as a numpy array from the archive's raw storage bytes, after checking that its
  shape and strides stay inside the storage. Legacy (pre-zip) torch files and bare pickles are refused:
  they cannot be checked before unpickling. ``read_torch_reference`` reads the same files with
  ``torch.load(weights_only=True)``; tests hold the two readers to identical results.
* ``.safetensors``: tensors ``weight`` and ``bias`` (needs the optional ``safetensors`` package).
* ``.npz``: arrays ``weight`` and ``bias``, read with ``allow_pickle=False``.

A piece with any key besides ``weight`` and ``bias`` is refused (not ignored): extra content means the file is
not what the loader thinks it is (say a whole model's state dict), and guessing would hide that.
Ids must be ``0 .. M-1`` for M pieces, each exactly once (``piece_3.pth`` + ``piece_03.pth``, or
``piece_3.pth`` + ``piece_3.safetensors``, is a duplicate).

Whole network in one file: a single ``.pth``/``.pt``/``.safetensors``/``.npz`` file whose flat mapping has
keys ``piece_<id>.weight`` and ``piece_<id>.bias`` (and nothing else) -> tensors (``load_network_file``).

Loaded layers are float32 numpy arrays (float64/float16/bfloat16 values converted; every value must be
finite in float32). Every problem raises ``PuzzleError`` naming the file, never another exception type.
"""
from __future__ import annotations

import collections
import io
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from collections import Counter
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .errors import PuzzleError

PIECE_EXTS = ("pth", "pt", "safetensors", "npz")
PIECE_RE = re.compile(r"^piece_(\d{1,9})\.(pth|pt|safetensors|npz)$")
NETWORK_KEY_RE = re.compile(r"^piece_(\d{1,9})\.(weight|bias)$")

# Generous caps against a misnamed huge file or a zip bomb; real pieces are tens of KiB.
MAX_FILE_BYTES = 4 << 30
MAX_PICKLE_BYTES = 64 << 20
MAX_TENSOR_ELEMENTS = 1 << 28  # a stride-0 view of a tiny storage could otherwise expand without bound

# Storage class -> (torch dtype name, numpy dtype). bfloat16 is read as its raw 16-bit pattern and widened
# to float32 (exactly) below. Storages of every dtype are harmless and
# allowed so that a wrong dtype gets a precise message after loading.
_STORAGE_DTYPES = {
    "FloatStorage": ("torch.float32", "f4"), "DoubleStorage": ("torch.float64", "f8"),
    "HalfStorage": ("torch.float16", "f2"), "BFloat16Storage": ("torch.bfloat16", "u2"),
    "LongStorage": ("torch.int64", "i8"), "IntStorage": ("torch.int32", "i4"),
    "ShortStorage": ("torch.int16", "i2"), "CharStorage": ("torch.int8", "i1"),
    "ByteStorage": ("torch.uint8", "u1"), "BoolStorage": ("torch.bool", "?"),
    "ComplexFloatStorage": ("torch.complex64", "c8"), "ComplexDoubleStorage": ("torch.complex128", "c16"),
}
_FLOAT_DTYPES = {"torch.float32", "torch.float64", "torch.float16", "torch.bfloat16"}
_REBUILD_TENSOR = ("torch._utils", "_rebuild_tensor_v2")
_REBUILD_PARAMETER = ("torch._utils", "_rebuild_parameter")
# The only globals a zip-format torch file of plain dense tensors needs.
SAFE_PICKLE_GLOBALS = frozenset(
    [("collections", "OrderedDict"), _REBUILD_TENSOR, _REBUILD_PARAMETER] + [("torch", s) for s in _STORAGE_DTYPES]
)
_STRING_PUSH_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
_MEMO_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_REFUSED_OPS = {"OBJ", "EXT1", "EXT2", "EXT4"}


class TensorData:
    """A tensor read from a file, as a numpy array: ``array`` (native byte order; bfloat16 already widened to
    float32) and ``dtype`` (the file's dtype name, e.g. ``torch.float64`` or ``int32``, for messages)."""

    __slots__ = ("array", "dtype", "is_float")

    def __init__(self, array: np.ndarray, dtype: str, is_float: bool):
        self.array, self.dtype, self.is_float = array, dtype, is_float

    def __repr__(self) -> str:
        return f"TensorData({self.dtype}, shape={tuple(self.array.shape)})"


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



# ------------------------------------------------------------------------------------------ torch files


# Pickles that passed the scan. The verdict depends on the bytes alone, and the pieces of one network mostly
# share the same few pickles (the public puzzle: 3 distinct among 97), so each is scanned once.
_SCANNED_OK: "collections.OrderedDict[bytes, None]" = collections.OrderedDict()
_SCANNED_MAX, _SCANNED_MAX_BYTES = 64, 1 << 16


def check_pickle_globals(data: bytes, path: Optional[Path] = None) -> None:
    """Refuse a pickle that references any global outside ``SAFE_PICKLE_GLOBALS`` (or uses opcodes that
    build objects from unchecked classes). Only scans the opcode stream; nothing is unpickled.

    ``STACK_GLOBAL`` takes its names from the stack, so it is accepted only when the two pushes just before
    it are constant strings (directly or fetched from the memo); anything cleverer is refused."""
    if data in _SCANNED_OK:
        return
    _scan_pickle(data, path)
    if len(data) <= _SCANNED_MAX_BYTES:  # pieces' pickles are a few hundred bytes; keep memory bounded
        _SCANNED_OK[data] = None
        if len(_SCANNED_OK) > _SCANNED_MAX:
            _SCANNED_OK.popitem(last=False)


def _scan_pickle(data: bytes, path: Optional[Path]) -> None:
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



class _Refused(Exception):
    """Raised inside the restricted unpickler; becomes a PuzzleError naming the file."""


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only a dtype tag (not callable, not a class)."""

    __slots__ = ("name", "dtype", "np_dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype, self.np_dtype = _STORAGE_DTYPES[name]


class _Storage:
    """One ``data/<key>`` record of the archive, as a flat numpy array of its dtype."""

    __slots__ = ("kind", "array")

    def __init__(self, kind: _StorageType, array: np.ndarray):
        self.kind, self.array = kind, array


def _as_index(v, what: str) -> int:
    if type(v) is not int or v < 0:  # bool is refused too
        raise _Refused(f"{what} must be a non-negative int, got {type(v).__name__} {v!r}"[:160])
    return v


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a numpy view of the storage, bounds-checked."""
    if not isinstance(storage, _Storage):
        raise _Refused(f"tensor rebuild from a {type(storage).__name__}, not a storage")
    offset = _as_index(storage_offset, "storage offset")
    if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
        raise _Refused("tensor size and stride must be tuples of the same length")
    size = tuple(_as_index(s, "tensor size") for s in size)
    stride = tuple(_as_index(s, "tensor stride") for s in stride)
    if backward_hooks is not None and (not isinstance(backward_hooks, dict) or backward_hooks):
        raise _Refused("tensor with backward hooks")
    if metadata is not None and not isinstance(metadata, dict):
        raise _Refused("tensor metadata is not a dict")
    flat = storage.array
    numel = 1
    for s in size:
        numel *= s
    if numel > MAX_TENSOR_ELEMENTS:
        raise _Refused(f"tensor of {numel} elements (limit {MAX_TENSOR_ELEMENTS})")
    if numel == 0:
        arr = np.zeros(size, dtype=flat.dtype)
    else:
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= flat.shape[0]:
            raise _Refused(f"tensor of size {size}, stride {stride} at offset {offset} reaches past its storage "
                           f"of {flat.shape[0]} elements")
        # In bounds (checked above), so the strided view reads only the storage's own bytes.
        arr = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride],
                                              writeable=False)
    kind = storage.kind
    if kind.dtype == "torch.bfloat16":  # the upper 16 bits of a float32: widen exactly
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return TensorData(arr, kind.dtype, kind.dtype in _FLOAT_DTYPES)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    """Stand-in for ``torch._utils._rebuild_parameter``: the parameter's tensor."""
    if not isinstance(data, TensorData):
        raise _Refused(f"parameter rebuilt from a {type(data).__name__}, not a tensor")
    return data


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a torch archive's data.pkl with stand-ins for the allow-listed globals only."""

    def __init__(self, pkl: bytes, zf: zipfile.ZipFile, prefix: str, byteorder: str):
        super().__init__(io.BytesIO(pkl), encoding="utf-8")
        self._zf, self._prefix, self._order = zf, prefix, byteorder
        self._storages: Dict[str, _Storage] = {}

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == _REBUILD_TENSOR:
            return _rebuild_tensor
        if (module, name) == _REBUILD_PARAMETER:
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise _Refused(f"it references {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)
                and isinstance(pid[2], str) and isinstance(pid[3], str)):
            raise _Refused(f"unexpected persistent id {pid!r}"[:160])
        kind, key = pid[1], pid[2]
        numel = _as_index(pid[4], "storage size")
        if key in self._storages:  # views of one storage (torch.load also reuses the first one loaded)
            return self._storages[key]
        name = f"{self._prefix}data/{key}"
        try:
            info = self._zf.getinfo(name)
        except KeyError:
            raise _Refused(f"storage record {name!r} is missing") from None
        native = np.dtype(kind.np_dtype)
        dt = native if self._order == sys.byteorder else native.newbyteorder()
        if info.file_size < numel * dt.itemsize:
            raise _Refused(f"storage record {name!r} holds {info.file_size} bytes, {numel * dt.itemsize} needed")
        raw = self._zf.read(info)
        flat = np.frombuffer(raw, dtype=dt, count=numel)
        if dt is not native:  # the file's byte order is not this machine's
            flat = flat.astype(native)
        self._storages[key] = st = _Storage(kind, flat)
        return st


def _torch_zip(raw: bytes, path: Path) -> Tuple[zipfile.ZipFile, zipfile.ZipInfo]:
    """The checks before any unpickling: zip format, one data.pkl of sane size."""
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
    return zf, pkls[0]


def _read_torch(raw: bytes, path: Path) -> object:
    """A zip-format torch file -> its object, tensors as ``TensorData`` (no torch needed)."""
    zf, info = _torch_zip(raw, path)
    try:
        pkl = zf.read(info)
        prefix = info.filename[: -len("data.pkl")]
        order = sys.byteorder  # what torch.load assumes when the record is absent
        if f"{prefix}byteorder" in zf.namelist():
            order = zf.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types on corrupt input
        raise PuzzleError(f"truncated or corrupt torch file (data.pkl: {_first_line(exc)})", path) from None
    if order not in ("little", "big"):
        raise PuzzleError(f"cannot load torch file (byteorder record says {order[:20]!r})", path)
    check_pickle_globals(pkl, path)
    try:
        return _TensorUnpickler(pkl, zf, prefix, order).load()
    except Exception as exc:  # noqa: BLE001 - a bad stream raises many types; _Refused says what it refused
        raise PuzzleError(f"cannot load torch file ({_first_line(exc)})", path) from None


def _from_torch(t, path: Path, label: str) -> TensorData:
    """A torch.Tensor (from torch.load or safetensors) as TensorData, refusing what is not a plain dense tensor."""
    import torch

    if t.layout != torch.strided or t.is_quantized:
        raise PuzzleError(f"{label} is not a plain dense tensor (layout {t.layout})", path)
    if t.is_meta:
        raise PuzzleError(f"{label} is a meta tensor without data", path)
    t = t.detach().cpu()
    arr = (t.float() if t.dtype == torch.bfloat16 else t).numpy()
    return TensorData(arr, str(t.dtype), t.dtype.is_floating_point)


def _tensors_as_data(obj, path: Path):
    """Tensor values of a loaded mapping -> TensorData (other values stay, for the messages)."""
    import torch

    if isinstance(obj, dict):
        return {k: (_from_torch(v, path, str(k)) if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
    return obj


def read_torch_reference(raw: bytes, path: Path) -> object:
    """The same file read by ``torch.load(weights_only=True)`` after the same scan (tests compare the two)."""
    import torch

    zf, info = _torch_zip(raw, path)
    try:
        pkl = zf.read(info)
    except Exception as exc:  # noqa: BLE001
        raise PuzzleError(f"truncated or corrupt torch file (data.pkl: {_first_line(exc)})", path) from None
    check_pickle_globals(pkl, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise PuzzleError(f"cannot load torch file ({_first_line(exc)})", path) from None
    return _tensors_as_data(obj, path)


def _read_safetensors(raw: bytes, path: Path) -> Dict[str, TensorData]:
    try:
        import safetensors  # noqa: F401 - the package itself (a submodule may be cached without it)
        from safetensors.numpy import load as st_load
    except ImportError:
        raise PuzzleError(
            "reading .safetensors needs the optional 'safetensors' package (pip install safetensors)", path
        ) from None
    if not raw:
        raise PuzzleError("file is empty (0 bytes)", path)
    try:
        try:
            arrays = st_load(raw)
        except Exception:  # noqa: BLE001 - e.g. bfloat16, which numpy lacks: torch reads those (and says why not)
            from safetensors.torch import load as st_load_torch

            return _tensors_as_data(st_load_torch(raw), path)
    except PuzzleError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise PuzzleError(f"cannot load safetensors file ({_first_line(exc)})", path) from None
    except BaseException as exc:
        if _is_rust_panic(exc):
            raise PuzzleError(f"cannot load safetensors file ({_first_line(exc)})", path) from None
        raise
    return {k: TensorData(v, str(v.dtype), v.dtype.kind == "f") for k, v in arrays.items()}


def _read_npz(raw: bytes, path: Path) -> Dict[str, TensorData]:
    if not raw:
        raise PuzzleError("file is empty (0 bytes)", path)
    if not raw.startswith(b"PK"):
        raise PuzzleError("not an .npz (zip) archive", path)
    _open_zip(raw, path, ".npz archive")
    out: Dict[str, TensorData] = {}
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            for key in npz.files:
                arr = npz[key]
                out[key] = TensorData(arr, str(arr.dtype), arr.dtype.kind == "f")
    except PuzzleError:
        raise
    except Exception as exc:  # noqa: BLE001 - np.load raises ValueError, OSError, zipfile errors, ...
        raise PuzzleError(f"cannot load .npz file ({_first_line(exc)})", path) from None
    return out


def read_tensor_file(path: Path, torch_reader=None) -> Dict[str, TensorData]:
    """A flat ``{str: TensorData}`` mapping from a .pth/.pt, .safetensors or .npz file; anything else is
    refused. ``torch_reader`` replaces the .pth reader (tests pass ``read_torch_reference``)."""
    path = Path(path)
    ext = path.suffix.lower().lstrip(".")
    if ext not in PIECE_EXTS:
        raise PuzzleError(f"unsupported file type '.{ext}' (expected one of {', '.join(PIECE_EXTS)})", path)
    raw = _read_bytes(path)
    if ext == "safetensors":
        obj: object = _read_safetensors(raw, path)
    elif ext == "npz":
        obj = _read_npz(raw, path)
    else:
        obj = (torch_reader or _read_torch)(raw, path)
    if not isinstance(obj, dict):
        raise PuzzleError(f"holds a {type(obj).__name__}, expected a dict of tensors", path)
    for key, val in obj.items():
        if not isinstance(key, str):
            raise PuzzleError(f"has a non-string key {key!r}; expected a dict of named tensors", path)
        if not isinstance(val, TensorData):
            raise PuzzleError(f"value of {key!r} is a {type(val).__name__}, not a tensor", path)
    return obj  # type: ignore[return-value]


def _check_array(t: TensorData, path: Path, label: str) -> np.ndarray:
    """An own, C-contiguous float32 copy of a floating-point tensor whose values are all finite in float32."""
    if not t.is_float:
        raise PuzzleError(f"{label} has dtype {t.dtype}, expected floating point", path)
    src = t.array
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array(src, dtype=np.float32, order="C", copy=True)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        v = float(np.asarray(src, dtype=np.float64)[idx])
        what = "NaN" if v != v else ("inf" if abs(v) == float("inf") else f"{v!r} (overflows float32)")
        n = int(bad.sum())
        raise PuzzleError(
            f"{label} contains {what} at index {idx if len(idx) != 1 else idx[0]}"
            + (f" ({n} non-finite values in all)" if n > 1 else ""),
            path,
        )
    return out


def _check_layer(w: TensorData, b: TensorData, path: Path, prefix: str = "") -> Dict[str, np.ndarray]:
    lw, lb = f"{prefix}weight", f"{prefix}bias"
    ws, bs = tuple(w.array.shape), tuple(b.array.shape)
    if len(ws) != 2:
        raise PuzzleError(f"{lw} has shape {ws}, expected 2 dimensions (out, in)", path)
    if len(bs) != 1:
        raise PuzzleError(f"{lb} has shape {bs}, expected 1 dimension (out,)", path)
    if ws[0] == 0 or ws[1] == 0:
        raise PuzzleError(f"{lw} has an empty shape {ws}", path)
    if bs[0] != ws[0]:
        raise PuzzleError(
            f"{lw} of shape {ws} and {lb} of shape {bs} do not match (bias needs {ws[0]} entries)",
            path,
        )
    return {"weight": _check_array(w, path, lw), "bias": _check_array(b, path, lb)}


def load_piece(path: Path, torch_reader=None) -> Dict[str, np.ndarray]:
    """One piece file -> {'weight': (out, in) float32, 'bias': (out,) float32}, fully validated."""
    path = Path(path)
    obj = read_tensor_file(path, torch_reader)
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


def load_network_file(path: Path, torch_reader=None) -> Tuple[Dict[int, Dict[str, np.ndarray]], Dict[int, str]]:
    """A single file with the whole shuffled network: keys piece_<id>.weight / piece_<id>.bias."""
    tensors = read_tensor_file(path, torch_reader)
    groups: Dict[int, Dict[str, Tuple[str, TensorData]]] = {}
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


def scan_piece_folder(folder: Path, notes: List[str], skip: Iterable[str] = ()) -> Dict[int, Path]:
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
