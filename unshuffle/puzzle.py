"""Puzzle data: the pieces of a shuffled residual network and its recorded data.

(Minimal first version; the hardened loader with safe unpickling, extra formats and precise errors
lives here too.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import pandas as pd
import torch

from .errors import PuzzleError

PIECE_RE = re.compile(r"^piece_(\d+)\.pth$")


@dataclass
class Puzzle:
    """A loaded puzzle. Piece stacks are ordered by ascending piece id within each role.

    W_in (N, h, d), b_in (N, h): the N block-input pieces (ids ``inp_ids``);
    W_out (N, d, h), b_out (N, d): the N block-output pieces (ids ``out_ids``);
    W_last (k, d), b_last (k,): the last layer (id ``last_id``);
    X (R, d) float32 inputs, pred (R, k) float32 recorded outputs, true (R, k) or None.
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


def _load_piece(path: Path) -> Dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise PuzzleError(f"cannot load piece ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})", path) from None
    if not isinstance(obj, dict) or "weight" not in obj or "bias" not in obj:
        raise PuzzleError("piece is not a dict with 'weight' and 'bias'", path)
    w, b = obj["weight"], obj["bias"]
    if not (isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor)):
        raise PuzzleError("'weight' and 'bias' must be tensors", path)
    if w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[0]:
        raise PuzzleError(f"weight {tuple(w.shape)} and bias {tuple(b.shape)} do not form a linear layer", path)
    w, b = w.detach().float().contiguous(), b.detach().float().contiguous()
    if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
        raise PuzzleError("weights contain NaN or inf", path)
    return {"weight": w, "bias": b}


def load_puzzle(
    path: Union[str, Path, None] = None,
    *,
    pieces: Union[str, Path, None] = None,
    data: Union[str, Path, None] = None,
) -> Puzzle:
    """Load a puzzle folder: ``historical_data.csv`` plus ``piece_<id>.pth`` files in ``pieces/`` or beside
    the CSV. ``pieces=`` (folder) and ``data=`` (CSV file) override the defaults."""
    root = Path(path) if path is not None else None
    if root is not None and not root.is_dir():
        raise PuzzleError("puzzle folder does not exist", root)
    if data is None:
        if root is None:
            raise PuzzleError("no puzzle folder and no data CSV given")
        data = root / "historical_data.csv"
    data = Path(data)
    if pieces is None:
        if root is None:
            root = data.parent
        pieces = root / "pieces" if (root / "pieces").is_dir() else root
    pieces = Path(pieces)
    if not pieces.is_dir():
        raise PuzzleError("pieces folder does not exist", pieces)
    if not data.is_file():
        raise PuzzleError("data CSV does not exist", data)

    found = {}
    for f in sorted(pieces.iterdir()):
        m = PIECE_RE.match(f.name)
        if m:
            found[int(m.group(1))] = _load_piece(f)
    if not found:
        raise PuzzleError("no piece_<id>.pth files found", pieces)
    return assemble(found, _read_csv(data), path=root, source=pieces)


def _read_csv(data: Path):
    try:
        df = pd.read_csv(data, float_precision="round_trip")
    except Exception as exc:  # noqa: BLE001
        raise PuzzleError(f"cannot read CSV ({exc})", data) from None
    meas = [c for c in df.columns if re.fullmatch(r"measurement_\d+", str(c))]
    meas.sort(key=lambda c: int(c.split("_")[1]))
    if not meas:
        raise PuzzleError("no measurement_<i> columns", data)
    if "pred" in df.columns:
        pcols = ["pred"]
    else:
        pcols = sorted((c for c in df.columns if re.fullmatch(r"pred_\d+", str(c))), key=lambda c: int(c.split("_")[1]))
    if not pcols:
        raise PuzzleError("no 'pred' column (or pred_0..pred_{k-1})", data)
    tcols = ["true"] if "true" in df.columns else [c for c in df.columns if re.fullmatch(r"true_\d+", str(c))]
    if len(df) == 0:
        raise PuzzleError("CSV has no rows", data)
    X = torch.tensor(df[meas].to_numpy(dtype=np.float32))
    pred = torch.tensor(df[pcols].to_numpy(dtype=np.float32))
    true = torch.tensor(df[tcols].to_numpy(dtype=np.float32)) if tcols else None
    if not (torch.isfinite(X).all() and torch.isfinite(pred).all()):
        raise PuzzleError("CSV contains NaN or inf", data)
    return X, pred, true, data


def assemble(found: Dict[int, Dict[str, torch.Tensor]], csv, path=None, source=None) -> Puzzle:
    """Sort pieces into roles by shape and build a Puzzle (used by every loader)."""
    X, pred, true, data = csv
    shapes: Dict[tuple, List[int]] = {}
    for i, p in sorted(found.items()):
        shapes.setdefault(tuple(p["weight"].shape), []).append(i)
    d = X.shape[1]
    k = pred.shape[1]
    last = shapes.get((k, d), [])
    inp = [i for s, ids in shapes.items() if s[1] == d and s != (k, d) for i in ids]
    out = [i for s, ids in shapes.items() if s[0] == d and s[1] != d for i in ids]
    if len(last) != 1 or not inp or len(inp) != len(out):
        desc = ", ".join(f"{len(v)} x {s}" for s, v in sorted(shapes.items()))
        raise PuzzleError(
            f"pieces do not form N inp (h,{d}) + N out ({d},h) + one last ({k},{d}) layer: found {desc}", source
        )
    inp.sort(); out.sort()
    st = lambda ids, key: torch.stack([found[i][key] for i in ids])
    return Puzzle(
        inp_ids=inp, out_ids=out, last_id=last[0],
        W_in=st(inp, "weight"), b_in=st(inp, "bias"), W_out=st(out, "weight"), b_out=st(out, "bias"),
        W_last=found[last[0]]["weight"], b_last=found[last[0]]["bias"],
        X=X, pred=pred, true=true, path=path,
    )
