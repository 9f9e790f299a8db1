"""Puzzle data: the pieces of a shuffled residual network and its recorded data, loaded safely.

Layout
------
A puzzle folder holds ``historical_data.csv`` and the pieces, either in a ``pieces/`` subfolder or beside
the CSV. ``load_puzzle(folder, pieces=..., data=...)`` overrides either location. Other files in the pieces
folder are ignored and listed in ``Puzzle.notes``.

Three jobs, three modules: ``unshuffle.tensorfiles`` reads piece files (the safe pickle scan and the
restricted readers; formats described there), ``unshuffle.csvdata`` reads the data CSV, and this module
holds the ``Puzzle`` model and sorts pieces into roles. Without ``pieces=``, a folder with neither
``pieces/`` nor ``piece_<id>.*`` files is searched for one whole-network file named ``pieces.<ext>`` or
``network.<ext>``.

Roles come from shapes: with d from the CSV, N pieces of shape (h, d) are block inputs, N of shape (d, h)
block outputs, one of shape (k, d) the last layer. Shapes that cannot be told apart (h == d, or k == h) are
refused with a message that says so.

Every problem raises ``PuzzleError`` naming the file (and the row and column, for data), never another
exception type. Loading needs numpy (and the C++ core for speed), never torch.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ._lazy import loaded, torch
from .csvdata import read_csv
from .errors import PuzzleError
from .tensorfiles import (  # noqa: F401 - re-exported: the loader's pieces keep their old names here
    MAX_FILE_BYTES,
    MAX_PICKLE_BYTES,
    NETWORK_KEY_RE,
    PIECE_EXTS,
    PIECE_RE,
    SAFE_PICKLE_GLOBALS,
    TensorData,
    _short_list,
    check_pickle_globals,
    load_network_file,
    load_piece,
    read_tensor_file,
    scan_piece_folder,
)

NETWORK_FILE_NAMES = tuple(f"{stem}.{ext}" for stem in ("pieces", "network") for ext in PIECE_EXTS)

# Old private names, kept for code and tests that import them from here.
_load_piece = load_piece
_load_network_file = load_network_file
_read_tensor_file = read_tensor_file
_scan_piece_folder = scan_piece_folder
_read_csv = read_csv

ARRAY_FIELDS = ("W_in", "b_in", "W_out", "b_out", "W_last", "b_last", "X", "pred", "true")


def _as_numpy(a) -> np.ndarray:
    """A numpy array for an array or a CPU torch tensor (shares its memory; no copy where none is needed)."""
    if loaded("torch") and isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.dtype.isnative:  # the canonical dtype object: the C++ core checks dtypes by identity
        c = np.dtype(a.dtype.char)
        if a.dtype is not c and a.dtype == c:
            a = a.view(c)
    return a


@dataclass
class PuzzleArrays:
    """The puzzle's numbers as numpy arrays (float32 when loaded from files); what the C++ core reads."""

    W_in: np.ndarray
    b_in: np.ndarray
    W_out: np.ndarray
    b_out: np.ndarray
    W_last: np.ndarray
    b_last: np.ndarray
    X: np.ndarray
    pred: np.ndarray
    true: Optional[np.ndarray] = None

    def __repr__(self) -> str:
        return "PuzzleArrays(" + ", ".join(
            f"{f}={'None' if getattr(self, f) is None else tuple(getattr(self, f).shape)}" for f in ARRAY_FIELDS) + ")"


def _torch_view(name: str):
    def get(self):
        arr = getattr(self.arrays, name)
        if arr is None:
            return None
        hit = self._views.get(name)
        if hit is None or hit[0] is not arr:  # built on first use; rebuilt if the array was replaced
            hit = self._views[name] = (arr, torch.from_numpy(arr))
        return hit[1]

    def set(self, value):
        setattr(self.arrays, name, None if value is None else _as_numpy(value))
        self._views.pop(name, None)

    return property(get, set, doc=f"``{name}`` as a torch tensor sharing the numpy array's memory (torch loads on first use).")


class Puzzle:
    """A loaded puzzle. Piece stacks are ordered by ascending piece id within each role.

    W_in (N, h, d), b_in (N, h): the N block-input pieces (ids ``inp_ids``);
    W_out (N, d, h), b_out (N, d): the N block-output pieces (ids ``out_ids``);
    W_last (k, d), b_last (k,): the last layer (id ``last_id``);
    X (R, d) float32 inputs, pred (R, k) float32 recorded outputs, true (R, k) or None.
    ``notes``: things the loader ignored or adjusted (non-piece files, unused columns); the CLI prints them.

    The numbers live in ``arrays`` (numpy; the C++ core reads these). The attributes ``W_in`` ... ``true``
    are torch tensors over the same memory, made on first use, so torch code reads the puzzle as before and
    a CPU solve never imports torch. The constructor takes numpy arrays or CPU torch tensors.
    """

    W_in = _torch_view("W_in")
    b_in = _torch_view("b_in")
    W_out = _torch_view("W_out")
    b_out = _torch_view("b_out")
    W_last = _torch_view("W_last")
    b_last = _torch_view("b_last")
    X = _torch_view("X")
    pred = _torch_view("pred")
    true = _torch_view("true")

    def __init__(self, inp_ids: List[int], out_ids: List[int], last_id: int, W_in, b_in, W_out, b_out, W_last, b_last,
                 X, pred, true=None, path: Optional[Path] = None, notes: Optional[List[str]] = None):
        self.inp_ids, self.out_ids, self.last_id = list(inp_ids), list(out_ids), last_id
        self.arrays = PuzzleArrays(*(_as_numpy(a) for a in (W_in, b_in, W_out, b_out, W_last, b_last, X, pred)),
                                   true=None if true is None else _as_numpy(true))
        self._views: Dict[str, tuple] = {}
        self.path = path
        self.notes: List[str] = list(notes) if notes else []

    @property
    def n_blocks(self) -> int:
        return len(self.inp_ids)

    @property
    def d(self) -> int:
        return int(self.arrays.W_in.shape[2])

    @property
    def h(self) -> int:
        return int(self.arrays.W_in.shape[1])

    @property
    def k(self) -> int:
        return int(self.arrays.W_last.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.arrays.X.shape[0])

    def answer(self, order_in: List[int], order_out: List[int]) -> List[int]:
        """Piece ids in execution order (the puzzle's answer format) for blocks given as stack indices."""
        ids: List[int] = []
        for a, b in zip(order_in, order_out):
            ids += [self.inp_ids[a], self.out_ids[b]]
        ids.append(self.last_id)
        return ids

    def blocks_of(self, ids: Sequence[int]) -> Tuple[List[int], List[int]]:
        """The inverse of ``answer``: piece ids in execution order (2N+1 of them, ``last`` at the end) as stack
        indices (order_in, order_out). Raises ValueError unless the ids are this puzzle's in and out pieces
        (each once, alternating) and its last piece."""
        n = self.n_blocks
        try:  # integers only: 3.7 or "3" is a malformed file, not piece 3
            ok = all(not isinstance(i, (bool, str)) and int(i) == i for i in ids)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise ValueError("an order must be a list of integer piece ids")
        ids = [int(i) for i in ids]
        if len(ids) != 2 * n + 1:
            raise ValueError(f"expected {2 * n + 1} piece ids in execution order (N={n} blocks), got {len(ids)}")
        if sorted(ids[0:-1:2]) != sorted(int(i) for i in self.inp_ids) or \
                sorted(ids[1:-1:2]) != sorted(int(i) for i in self.out_ids) or ids[-1] != int(self.last_id):
            raise ValueError("the ids are not this puzzle's in/out pieces, alternating, each once, then its last piece")
        inp = {int(p): a for a, p in enumerate(self.inp_ids)}
        out = {int(p): b for b, p in enumerate(self.out_ids)}
        return [inp[i] for i in ids[0:-1:2]], [out[i] for i in ids[1:-1:2]]

    def __repr__(self) -> str:
        where = f", path={str(self.path)!r}" if self.path is not None else ""
        return f"Puzzle(N={self.n_blocks}, d={self.d}, h={self.h}, k={self.k}, rows={self.n_rows}{where})"


def load_order(path: Union[str, Path], puzzle: "Puzzle") -> List[int]:
    """Piece ids in execution order from a file, checked against ``puzzle`` (``Puzzle.blocks_of``): a JSON list,
    a JSON object with ``permutation`` (``unshuffle solve --json`` output) or ``answer``, or comma- or
    newline-separated ids. Raises PuzzleError naming the file."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PuzzleError(f"cannot read the order file: {exc}", path) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = [int(x) for x in text.replace("\n", ",").split(",") if x.strip()]
        except ValueError:
            raise PuzzleError("not an order: expected JSON or comma-separated piece ids", path) from None
    if isinstance(obj, dict):
        obj = obj.get("permutation") or obj.get("answer")
    if not isinstance(obj, list):
        raise PuzzleError("not an order: expected a list of piece ids (or an object with 'permutation')", path)
    try:
        puzzle.blocks_of(obj)
    except ValueError as exc:
        raise PuzzleError(str(exc), path) from None
    return [int(i) for i in obj]


def answer_sha256(answer: List[int]) -> str:
    """sha256 of ``",".join(str(i) for i in answer)``: the public puzzle's answer check (``Puzzle.answer`` gives
    the ids in that format)."""
    return hashlib.sha256(",".join(str(int(i)) for i in answer).encode()).hexdigest()


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
    found: Dict[int, Dict[str, object]],
    csv,
    path=None,
    source=None,
    files: Optional[Dict[int, str]] = None,
) -> Puzzle:
    """Sort pieces into roles by shape and build a Puzzle (used by every loader).

    ``found``: piece id -> {'weight', 'bias'} (numpy arrays or torch tensors); ``csv``: (X (R, d), pred (R, k),
    true or None, data path); ``source``: where the pieces came from (for messages); ``files``: piece id ->
    file name (for messages)."""
    X, pred, true, data = csv
    X, pred, true = _as_numpy(X), _as_numpy(pred), (None if true is None else _as_numpy(true))
    found = {i: {key: _as_numpy(v) for key, v in p.items()} for i, p in found.items()}
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
    st = lambda ids, key: np.stack([found[i][key] for i in ids])  # noqa: E731
    return Puzzle(
        inp_ids=inp, out_ids=out, last_id=last[0],
        W_in=st(inp, "weight"), b_in=st(inp, "bias"), W_out=st(out, "weight"), b_out=st(out, "bias"),
        W_last=found[last[0]]["weight"], b_last=found[last[0]]["bias"],
        X=X, pred=pred, true=true, path=Path(path) if path is not None else None,
    )


# ---------------------------------------------------------------------------------------------- entry


def _default_pieces(root: Path) -> Path:
    sub = root / "pieces"


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
        by_id = scan_piece_folder(pieces, notes, skip)
        found = {i: load_piece(f) for i, f in by_id.items()}
        files = {i: f.name for i, f in by_id.items()}
    else:
        found, files = load_network_file(pieces)
    csv = read_csv(data, notes)
    puzzle = assemble(found, csv, path=root, source=pieces, files=files)
    puzzle.notes.extend(notes)
    return puzzle
