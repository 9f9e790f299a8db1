"""Loader: safe unpickling, the accepted formats, and one precise PuzzleError per kind of bad input.

Small puzzles are written into tmp_path; the public puzzle is read from ../shared (skipped when absent).
"""
from __future__ import annotations

import csv
import json
import io
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from unshuffle import PuzzleError, load_puzzle
from unshuffle import puzzle as pz_mod
from unshuffle import tensorfiles
from unshuffle.puzzle import Puzzle, _load_piece, _read_csv, assemble, check_pickle_globals


# ------------------------------------------------------------------------------------------- builders


def make_layers(n=3, d=4, h=6, k=1, seed=0):
    """Execution-order layers [(w, b)]: inp_1, out_1, ..., inp_n, out_n, last."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(n):
        layers.append((torch.randn(h, d, generator=g) * 0.4, torch.randn(h, generator=g) * 0.1))
        layers.append((torch.randn(d, h, generator=g) * 0.4, torch.randn(d, generator=g) * 0.1))
    layers.append((torch.randn(k, d, generator=g), torch.randn(k, generator=g)))
    return layers


def forward(layers, X):
    x = X
    for i in range(0, len(layers) - 1, 2):
        (wi, bi), (wo, bo) = [(w.float(), b.float()) for w, b in layers[i : i + 2]]
        x = x + torch.relu(x @ wi.T + bi) @ wo.T + bo
    w, b = layers[-1]
    return x @ w.float().T + b.float()


def write_csv(path, X, pred, true=None, header=None):
    X, pred = np.asarray(X, np.float32), np.asarray(pred, np.float32)
    d, k = X.shape[1], pred.shape[1]
    cols = [f"measurement_{i}" for i in range(d)] + (["pred"] if k == 1 else [f"pred_{i}" for i in range(k)])
    if true is not None:
        cols += ["true"] if k == 1 else [f"true_{i}" for i in range(k)]
    lines = [",".join(header or cols)]
    for r in range(X.shape[0]):
        vals = [str(v) for v in X[r]] + [str(v) for v in pred[r]]  # numpy: shortest float32 text
        if true is not None:
            vals += [repr(float(v)) for v in np.asarray(true)[r]]
        lines.append(",".join(vals))
    Path(path).write_text("\n".join(lines) + "\n")


def save_piece(path, w, b, fmt=None):
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    if fmt in ("pth", "pt"):
        torch.save({"weight": w, "bias": b}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({"weight": w.contiguous(), "bias": b.contiguous()}, str(path))
    elif fmt == "npz":
        np.savez(path, weight=w.numpy(), bias=b.numpy())
    else:
        raise ValueError(fmt)


def make_puzzle(root, n=3, d=4, h=6, k=1, rows=16, seed=0, fmt="pth", sub="pieces", layers=None):
    """Write a small valid puzzle; returns (root, answer ids in execution order, layers)."""
    root = Path(root)
    layers = layers or make_layers(n, d, h, k, seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randperm(len(layers), generator=g).tolist()
    pdir = root / sub if sub else root
    pdir.mkdir(parents=True, exist_ok=True)
    for pos, pid in enumerate(ids):
        ext = fmt if isinstance(fmt, str) else fmt[pos % len(fmt)]
        save_piece(pdir / f"piece_{pid}.{ext}", *layers[pos])
    X = torch.randn(rows, d, generator=g)
    write_csv(root / "historical_data.csv", X, forward(layers, X), true=forward(layers, X) + 0.01)
    return root, ids, layers


def raises(fn, path, *patterns):
    """Call fn; assert a PuzzleError whose .path is `path`, whose message names it and matches patterns."""
    with pytest.raises(PuzzleError) as ei:
        fn()
    e = ei.value
    msg = str(e)
    assert e.path == Path(path), msg
    assert str(Path(path)) in msg, msg
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in: {msg}"
    return e


def piece_path(root, ids, pos, ext="pth"):
    return Path(root) / "pieces" / f"piece_{ids[pos]}.{ext}"


# --------------------------------------------------------------------------------------- valid inputs


@pytest.mark.parametrize("fmt", ["pth", "pt", "safetensors", "npz", ("pth", "safetensors", "npz")])
def test_formats_load_and_roles_are_right(tmp_path, fmt):
    root, ids, layers = make_puzzle(tmp_path, fmt=fmt)
    p = load_puzzle(root)
    n = (len(layers) - 1) // 2
    assert (p.n_blocks, p.d, p.h, p.k, p.n_rows) == (n, 4, 6, 1, 16)
    assert p.inp_ids == sorted(ids[0:-1:2]) and p.out_ids == sorted(ids[1:-1:2]) and p.last_id == ids[-1]
    # the answer order rebuilt from the stacks reproduces pred
    oi = [p.inp_ids.index(ids[2 * b]) for b in range(n)]
    oo = [p.out_ids.index(ids[2 * b + 1]) for b in range(n)]
    assert p.answer(oi, oo) == ids
    x = p.X
    for a, b in zip(oi, oo):
        x = x + torch.relu(x @ p.W_in[a].T + p.b_in[a]) @ p.W_out[b].T + p.b_out[b]
    torch.testing.assert_close(x @ p.W_last.T + p.b_last, p.pred, rtol=1e-5, atol=1e-5)
    assert p.true is not None and p.true.shape == p.pred.shape
    assert p.W_in.dtype == torch.float32 and p.notes == []


def test_pieces_beside_csv_and_explicit_paths(tmp_path):
    root, ids, _ = make_puzzle(tmp_path / "a", sub=None)
    p = load_puzzle(root)
    assert p.notes == []  # the CSV itself is not reported as a stray file
    q = load_puzzle(pieces=root, data=root / "historical_data.csv")
    assert q.last_id == p.last_id == ids[-1]


def test_non_piece_files_are_ignored_and_noted(tmp_path):
    root, ids, _ = make_puzzle(tmp_path)
    for name in ["README.md", "piece_x.pth", "piece_3.pth.bak", ".DS_Store"]:
        (root / "pieces" / name).write_text("junk")
    (root / "pieces" / "sub").mkdir()
    p = load_puzzle(root)
    assert len(p.notes) == 1
    for name in ["README.md", "piece_x.pth", "piece_3.pth.bak", ".DS_Store", "sub/"]:
        assert name in p.notes[0]


def test_extra_csv_columns_are_noted(tmp_path):
    root, ids, _ = make_puzzle(tmp_path)
    f = root / "historical_data.csv"
    lines = f.read_text().splitlines()
    f.write_text("\n".join([lines[0] + ",comment"] + [l + ",x" for l in lines[1:]]) + "\n\n\n")
    p = load_puzzle(root)
    assert any("comment" in n for n in p.notes) and any("empty line" in n for n in p.notes)
    assert p.n_rows == 16


def _network_dict(layers, ids):
    out = {}
    for pos, pid in enumerate(ids):
        out[f"piece_{pid}.weight"], out[f"piece_{pid}.bias"] = layers[pos]
    return out


@pytest.mark.parametrize("name", ["pieces.pth", "network.safetensors", "pieces.npz"])
def test_single_network_file(tmp_path, name):
    root, ids, layers = make_puzzle(tmp_path / "src")
    net = _network_dict(layers, ids)
    f = tmp_path / name
    if name.endswith(".pth"):
        torch.save(net, f)
    elif name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in net.items()}, str(f))
    else:
        np.savez(f, **{k: v.numpy() for k, v in net.items()})
    p = load_puzzle(pieces=f, data=root / "historical_data.csv")
    ref = load_puzzle(root)
    assert (p.inp_ids, p.out_ids, p.last_id) == (ref.inp_ids, ref.out_ids, ref.last_id)
    assert torch.equal(p.W_in, ref.W_in) and torch.equal(p.b_last, ref.b_last)
    # found automatically when the folder has no pieces/ and no piece_* files
    auto = tmp_path / "auto"
    auto.mkdir()
    (auto / name).write_bytes(f.read_bytes())
    (auto / "historical_data.csv").write_bytes((root / "historical_data.csv").read_bytes())
    assert load_puzzle(auto).last_id == ref.last_id


def test_float64_and_half_pieces_become_float32(tmp_path):
    layers = [(w.double(), b.half()) for w, b in make_layers()]
    root, ids, _ = make_puzzle(tmp_path, layers=layers)
    p = load_puzzle(root)
    assert p.W_in.dtype == p.b_in.dtype == torch.float32


# --------------------------------------------------------------------------------------------- safety


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvilOpen:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_zip_with_pickle(pkl: bytes) -> bytes:
    """A valid torch zip whose data.pkl is replaced by `pkl` (the fuzzers use this too)."""
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2, 2), "bias": torch.zeros(2)}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = pkl if info.filename.endswith("/data.pkl") else src.read(info)
            dst.writestr(info.filename, data)
    return out.getvalue()


def _exec_p0(marker) -> bytes:
    return b"cbuiltins\nexec\n(V" + f"open({str(marker)!r}, 'w').close()".encode() + b"\ntR."


def _exec_stack_global(marker) -> bytes:
    code = f"open({str(marker)!r}, 'w').close()".encode()
    return (
        b"\x80\x04\x8c\x08builtins\x94\x8c\x04exec\x94\x93\x94"
        + b"\x8c" + bytes([len(code)]) + code + b"\x94\x85\x94R\x94."
    )


def _exec_via_memo_trick(marker) -> bytes:
    # push safe-looking names, pop them, then STACK_GLOBAL on the strings below: must still be refused
    code = f"open({str(marker)!r}, 'w').close()".encode()
    return (
        b"\x80\x04\x8c\x08builtins\x8c\x04exec"
        b"\x8c\x0bcollections\x8c\x0bOrderedDict00\x93"
        + b"\x8c" + bytes([len(code)]) + code + b"\x85R."
    )


@pytest.mark.parametrize(
    "make", [
        lambda m: pickle.dumps({"weight": _Evil(m), "bias": torch.zeros(1)}),
        lambda m: pickle.dumps(_EvilOpen(m), protocol=0),
        _exec_p0, _exec_stack_global, _exec_via_memo_trick,
    ], ids=["reduce_os_system", "reduce_open_p0", "global_exec_p0", "stack_global_exec", "stack_global_pop_trick"],
)
@pytest.mark.parametrize("wrap", ["bare_pickle", "in_torch_zip"])
def test_malicious_pickles_are_refused_without_running(tmp_path, make, wrap):
    marker = tmp_path / "pwned"
    pkl = make(marker)
    # sanity: these pickles really do create the file when unpickled normally
    if wrap == "bare_pickle" and make is _exec_p0:
        probe = tmp_path / "probe"
        pickle.loads(_exec_p0(probe))
        assert probe.exists()
    f = tmp_path / "pieces" / "piece_0.pth"
    f.parent.mkdir()
    f.write_bytes(pkl if wrap == "bare_pickle" else _torch_zip_with_pickle(pkl))
    raises(lambda: _load_piece(f), f, "refused|not a zip-format")
    assert not marker.exists()


def test_torch_save_of_malicious_object_refused_by_scan_and_by_torch(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    f = tmp_path / "piece_0.pth"
    torch.save({"weight": _Evil(marker), "bias": torch.zeros(2)}, f)
    raises(lambda: _load_piece(f), f, r"refused unsafe pickle: it references (posix|os|nt)\.system")
    # second line of defence: with the scan switched off, the restricted unpickler still refuses
    monkeypatch.setattr(tensorfiles, "check_pickle_globals", lambda data, path=None: None)
    raises(lambda: _load_piece(f), f, "cannot load torch file")
    assert not marker.exists()


def test_check_pickle_globals_accepts_torch_tensors_only():
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(3, 2).state_dict(), buf)
    pkl = zipfile.ZipFile(io.BytesIO(buf.getvalue())).read("archive/data.pkl")
    check_pickle_globals(pkl)  # no error
    for bad in [pickle.dumps(len), pickle.dumps(Path("x")), pickle.dumps(np.zeros(2))]:
        with pytest.raises(PuzzleError, match="refused unsafe pickle"):
            check_pickle_globals(bad)


@pytest.mark.parametrize(
    "obj, pattern", [
        ([torch.zeros(2, 2), torch.zeros(2)], "holds a list"),
        ("weights", "holds a str"),
        ({"weight": {"w": torch.zeros(2, 2)}, "bias": torch.zeros(2)}, "value of 'weight' is a dict"),
        ({"weight": [1.0, 2.0], "bias": torch.zeros(2)}, "value of 'weight' is a list"),
        ({"weight": "abc", "bias": torch.zeros(2)}, "value of 'weight' is a str"),
        ({1: torch.zeros(2, 2), "bias": torch.zeros(2)}, "non-string key 1"),
        ({"weight": torch.zeros(2, 2)}, "missing 'bias'"),
        ({"weight": torch.zeros(2, 2), "bias": torch.zeros(2), "extra": torch.zeros(1)}, "unexpected key.*'extra'"),
        ({"weight": torch.zeros(2, 2, dtype=torch.int64), "bias": torch.zeros(2)}, "dtype torch.int64"),
        ({"weight": torch.zeros(2, 2), "bias": torch.zeros(2, dtype=torch.complex64)}, "dtype torch.complex64"),
        ({"weight": torch.zeros(2, 2).to_sparse(), "bias": torch.zeros(2)}, "refused unsafe pickle"),
    ],
)
def test_non_tensor_content_refused(tmp_path, obj, pattern):
    f = tmp_path / "piece_0.pth"
    torch.save(obj, f)
    raises(lambda: _load_piece(f), f, pattern)


def test_npz_with_pickled_object_array_refused(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "piece_0.npz"
    arr = np.empty(1, dtype=object)
    arr[0] = _Evil(marker)
    np.savez(f, weight=arr, bias=np.zeros(1, np.float32))
    raises(lambda: _load_piece(f), f, "(?i)pickle")
    assert not marker.exists()
    g = tmp_path / "piece_1.npz"
    np.savez(g, weight=np.zeros((2, 2), np.int32), bias=np.zeros(2, np.float32))
    raises(lambda: _load_piece(g), g, "dtype int32")


def test_missing_safetensors_package_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "piece_0.safetensors"
    save_piece(f, torch.zeros(2, 2), torch.zeros(2))
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    raises(lambda: _load_piece(f), f, "needs the optional 'safetensors' package")


# ----------------------------------------------------------------------------------- broken piece files


def test_empty_truncated_and_garbage_pth(tmp_path):
    good = io.BytesIO()
    torch.save({"weight": torch.randn(6, 4), "bias": torch.randn(6)}, good)
    raw = good.getvalue()
    cases = {
        "empty": (b"", "empty"),
        "truncated": (raw[: len(raw) // 2], "truncated or corrupt|cannot load"),
        "garbage_zip": (_zip_with({"archive/data.pkl": os.urandom(64), "archive/version": b"3"}), "pickle|cannot load"),
        "zip_no_pkl": (_zip_with({"x.txt": b"hello"}), "expected one data.pkl"),
        "text": (b"hello world", "not a zip-format torch file"),
        "bare_pickle": (pickle.dumps({"weight": 1}), "bare pickle"),
        "flipped_tail": (raw[:-30] + bytes(b ^ 0xFF for b in raw[-30:]), "truncated or corrupt|cannot load"),
    }
    for name, (data, pattern) in cases.items():
        f = tmp_path / f"{name}" / "piece_0.pth"
        f.parent.mkdir()
        f.write_bytes(data)
        raises(lambda: _load_piece(f), f, pattern)


def _zip_with(members):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for k, v in members.items():
            z.writestr(k, v)
    return out.getvalue()


def test_broken_safetensors_and_npz(tmp_path):
    for name, data, pattern in [
        ("piece_0.safetensors", b"", "empty"),
        ("piece_1.safetensors", b"\xff" * 20, "cannot load safetensors"),
        ("piece_2.npz", b"", "empty"),
        ("piece_3.npz", b"not a zip", "not an .npz"),
        ("piece_4.npz", _zip_with({"weight.npy": b"garbage"}), "cannot load .npz"),
    ]:
        f = tmp_path / name
        f.write_bytes(data)
        raises(lambda: _load_piece(f), f, pattern)


@pytest.mark.parametrize(
    "w, b, pattern", [
        (torch.zeros(6, 4), torch.zeros(5), r"weight of shape \(6, 4\) and bias of shape \(5,\) do not match"),
        (torch.zeros(6), torch.zeros(6), "weight has shape .* expected 2 dimensions"),
        (torch.zeros(6, 4), torch.zeros(6, 1), "bias has shape .* expected 1 dimension"),
        (torch.zeros(0, 4), torch.zeros(0), "empty shape"),
    ],
)
def test_weight_bias_shape_errors(tmp_path, w, b, pattern):
    f = tmp_path / "piece_0.pth"
    save_piece(f, w, b)
    raises(lambda: _load_piece(f), f, pattern)


@pytest.mark.parametrize("ext", ["pth", "safetensors", "npz"])
@pytest.mark.parametrize(
    "where, value, pattern", [
        ("weight", float("nan"), r"weight contains NaN at index \(2, 1\)"),
        ("weight", float("inf"), r"weight contains inf"),
        ("bias", float("-inf"), r"bias contains inf at index 3"),
    ],
)
def test_non_finite_weights_name_the_file(tmp_path, ext, where, value, pattern):
    root, ids, layers = make_puzzle(tmp_path, fmt=ext)
    w, b = layers[0][0].clone(), layers[0][1].clone()
    if where == "weight":
        w[2, 1] = value
    else:
        b[3] = value
    f = piece_path(root, ids, 0, ext)
    save_piece(f, w, b)
    raises(lambda: load_puzzle(root), f, pattern)


def test_float64_overflowing_float32_is_named(tmp_path):
    f = tmp_path / "piece_0.pth"
    w = torch.zeros(2, 2, dtype=torch.float64)
    w[1, 0] = 1e300
    save_piece(f, w, torch.zeros(2))
    raises(lambda: _load_piece(f), f, r"overflows float32")


# ------------------------------------------------------------------------------------- folder / ids


def test_missing_paths(tmp_path):
    raises(lambda: load_puzzle(tmp_path / "nope"), tmp_path / "nope", "puzzle folder does not exist")
    (tmp_path / "file").write_text("x")
    raises(lambda: load_puzzle(tmp_path / "file"), tmp_path / "file", "not a folder")
    raises(lambda: load_puzzle(tmp_path), tmp_path / "historical_data.csv", "data CSV does not exist")
    root, ids, _ = make_puzzle(tmp_path / "p")
    raises(lambda: load_puzzle(root, pieces=root / "gone"), root / "gone", "does not exist")
    with pytest.raises(PuzzleError, match="no puzzle folder and no data CSV"):
        load_puzzle()


def test_no_pieces(tmp_path):
    root, ids, _ = make_puzzle(tmp_path)
    for f in (root / "pieces").iterdir():
        f.unlink()
    raises(lambda: load_puzzle(root), root / "pieces", "no piece files .*empty")
    (root / "pieces" / "notes.txt").write_text("x")
    raises(lambda: load_puzzle(root), root / "pieces", "no piece files .*notes.txt")


def test_gap_in_ids(tmp_path):
    root, ids, _ = make_puzzle(tmp_path)
    m = len(ids)
    src = root / "pieces" / "piece_2.pth"
    src.rename(root / "pieces" / f"piece_{m}.pth")
    raises(lambda: load_puzzle(root), root / "pieces", rf"ids must be 0..{m - 1}.*missing 2.*piece_{m}\.pth")


@pytest.mark.parametrize("second", ["piece_03.pth", "piece_3.safetensors", "piece_003.npz"])
def test_duplicate_ids(tmp_path, second):
    root, ids, layers = make_puzzle(tmp_path)
    pos = ids.index(3)
    save_piece(root / "pieces" / second, *layers[pos])
    with pytest.raises(PuzzleError, match="duplicate piece id 3") as ei:
        load_puzzle(root)
    assert ei.value.path in (root / "pieces" / second, root / "pieces" / "piece_3.pth")
    assert "piece_3.pth" in str(ei.value) and second in str(ei.value)


# ----------------------------------------------------------------------------------------- shapes


def test_counts_off_are_named(tmp_path):
    root, ids, layers = make_puzzle(tmp_path, n=4, d=4, h=6)
    # turn one block output (4, 6) into a block input (6, 4): 5 inputs, 3 outputs
    pos = 1
    f = piece_path(root, ids, pos)
    save_piece(f, torch.randn(6, 4), torch.randn(6))
    raises(lambda: load_puzzle(root), root / "pieces", r"5 pieces of shape \(6, 4\) \(block input\) but 3 of shape \(4, 6\)")


def test_stray_shape_and_two_last_layers(tmp_path):
    root, ids, layers = make_puzzle(tmp_path, n=3)
    save_piece(piece_path(root, ids, 0), torch.randn(5, 5), torch.randn(5))
    e = raises(lambda: load_puzzle(root), root / "pieces", r"shape \(5, 5\) fit no role", rf"piece_{ids[0]}\.pth")
    root2, ids2, _ = make_puzzle(tmp_path / "b", n=3)
    save_piece(piece_path(root2, ids2, 0), torch.randn(1, 4), torch.randn(1))
    save_piece(piece_path(root2, ids2, 1), torch.randn(1, 4), torch.randn(1))
    raises(lambda: load_puzzle(root2), root2 / "pieces", r"3 pieces of shape \(1, 4\) \(last layer\), expected exactly 1")


def test_ambiguous_h_equals_d(tmp_path):
    root, ids, _ = make_puzzle(tmp_path, n=3, d=5, h=5)
    raises(lambda: load_puzzle(root), root / "pieces", r"ambiguous shapes: h == d == 5")


def test_ambiguous_k_equals_h(tmp_path):
    root, ids, _ = make_puzzle(tmp_path, n=3, d=4, h=6, k=6)
    raises(lambda: load_puzzle(root), root / "pieces", r"ambiguous shapes: k == h == 6.*4 pieces is the last layer")


def test_k_equals_d_is_fine(tmp_path):
    root, ids, _ = make_puzzle(tmp_path, n=3, d=4, h=6, k=4)
    p = load_puzzle(root)
    assert p.k == 4 and p.last_id == ids[-1]


def test_csv_width_disagrees_with_pieces(tmp_path):
    root, ids, layers = make_puzzle(tmp_path, n=3, d=4, h=6)
    X = torch.randn(8, 3)
    write_csv(root / "historical_data.csv", X, torch.randn(8, 1))
    raises(lambda: load_puzzle(root), root / "historical_data.csv", r"CSV has 3 measurement column\(s\) but the pieces are for d=4")
    write_csv(root / "historical_data.csv", torch.randn(8, 4), torch.randn(8, 2))
    raises(lambda: load_puzzle(root), root / "historical_data.csv", r"CSV has 2 pred column\(s\) but the last layer .* has 1 output")


def test_assemble_without_files_mapping():
    # other modules call assemble() directly with synthetic pieces
    layers = make_layers(n=2, d=3, h=5)
    found = {i: {"weight": w, "bias": b} for i, (w, b) in enumerate(layers)}
    X = torch.randn(4, 3)
    p = assemble(found, (X, forward(layers, X), None, None))
    assert p.inp_ids == [0, 2] and p.out_ids == [1, 3] and p.last_id == 4
    found[1] = {"weight": torch.randn(5, 3), "bias": torch.randn(5)}
    with pytest.raises(PuzzleError, match=r"3 pieces of shape \(5, 3\) \(block input\) but 1 of shape \(3, 5\)"):
        assemble(found, (X, forward(layers, X), None, None))


# -------------------------------------------------------------------------------------------- CSV


def _csv(tmp_path, text, name="data.csv"):
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize(
    "text, pattern", [
        ("", "empty"),
        ("measurement_0,measurement_1,pred\n", "no data rows"),
        ("measurement_0,measurement_1,true\n1,2,3\n", "no 'pred' column"),
        ("foo,pred\n1,2\n", "no measurement_<i> columns"),
        ("measurement_0,measurement_2,pred\n1,2,3\n", "measurement columns have gaps: missing measurement_1"),
        ("measurement_0,measurement_1,measurement_01,pred\n1,2,3,4\n", "duplicate column index"),
        ("measurement_0,measurement_0,pred\n1,2,3\n", "duplicate column 'measurement_0'"),
        ("measurement_0,measurement_1,pred\n1,2,3\n4,abc,6\n", r"non-numeric value 'abc' in column measurement_1, row 1 \(line 3\)"),
        ("measurement_0,measurement_1,pred\n1,2,3\n4,5,True\n", r"non-numeric value 'True' in column pred, row 1"),
        ("measurement_0,measurement_1,pred\n1,2,3\n4,,6\n", r"empty or NaN cell in column measurement_1, row 1 \(line 3\)"),
        ("measurement_0,measurement_1,pred\n1,2,3\n\n4,5,6\n", r"empty or NaN cell in column measurement_0, row 1 \(line 3\)"),
        ("measurement_0,measurement_1,pred\n1,nan,3\n", r"empty or NaN cell in column measurement_1, row 0"),
        ("measurement_0,measurement_1,pred\n1,2,3\n1,2,-inf\n", r"infinite value in column pred, row 1 \(line 3\)"),
        ("measurement_0,measurement_1,pred\n1e39,2,3\n", r"1e\+39 \(overflows float32\) in column measurement_0, row 0"),
        ("measurement_0,measurement_1,pred\n1,2,3\n4,5,6,7\n", "malformed CSV"),
        ("measurement_0,measurement_1,pred\n1,2,3,4\n", "malformed CSV"),
        ("measurement_0,pred,pred_0\n1,2,3\n", "both 'pred' and 'pred_0'"),
        ("measurement_0,pred_0,pred_2\n1,2,3\n", "pred columns have gaps"),
        ('measurement_0,pred\n"1,2\n', "malformed CSV|non-numeric"),
        ("measurement_0,pred\n1_0,2\n", r"non-numeric value '1_0' in column measurement_0, row 0"),  # float() takes it
    ],
)
def test_csv_errors(tmp_path, text, pattern):
    f = _csv(tmp_path, text)
    raises(lambda: _read_csv(f), f, pattern)


def test_csv_not_utf8(tmp_path):
    f = tmp_path / "data.csv"
    f.write_bytes(b"measurement_0,pred\n\xff\xfe,1\n")
    raises(lambda: _read_csv(f), f, "not UTF-8|non-numeric|malformed")


def test_csv_nan_in_true_and_multi_output(tmp_path):
    f = _csv(tmp_path, "measurement_0,pred_0,pred_1,true_0,true_1\n1,2,3,4,5\n1,2,3,4,nan\n")
    raises(lambda: _read_csv(f), f, r"column true_1, row 1")
    g = _csv(tmp_path, "measurement_0,pred_0,pred_1,true\n1,2,3,4\n", "g.csv")
    notes = []
    X, pred, true, _ = _read_csv(g, notes)
    assert pred.shape == (1, 2) and true is None and "true" in notes[0]


def test_nan_in_data_through_load_puzzle(tmp_path):
    root, ids, _ = make_puzzle(tmp_path)
    f = root / "historical_data.csv"
    lines = f.read_text().splitlines()
    cells = lines[5].split(",")
    cells[2] = "nan"
    lines[5] = ",".join(cells)
    f.write_text("\n".join(lines) + "\n")
    raises(lambda: load_puzzle(root), f, r"NaN cell in column measurement_2, row 4 \(line 6\)")


# ---------------------------------------------------------------------------------- network file


def test_network_file_errors(tmp_path):
    layers = make_layers(n=2)
    ids = list(range(5))
    net = _network_dict(layers, ids)
    f = tmp_path / "pieces.pth"
    bad = dict(net, **{"extra": torch.zeros(1)})
    torch.save(bad, f)
    raises(lambda: _load_network(f), f, r"unexpected key\(s\) 'extra'")
    bad = dict(net)
    del bad["piece_2.bias"]
    torch.save(bad, f)
    raises(lambda: _load_network(f), f, "piece 2 has a weight .* but no bias")
    bad = dict(net, **{"piece_03.weight": net["piece_3.weight"], "piece_03.bias": net["piece_3.bias"]})
    torch.save(bad, f)
    raises(lambda: _load_network(f), f, "duplicate piece id 3")
    bad = {k.replace("piece_4", "piece_7"): v for k, v in net.items()}
    torch.save(bad, f)
    raises(lambda: _load_network(f), f, r"missing 4.*piece_7")
    bad = dict(net, **{"piece_1.weight": torch.full((4, 6), float("nan"))})
    torch.save(bad, f)
    raises(lambda: _load_network(f), f, r"piece_1\.weight contains NaN")
    torch.save({}, f)
    raises(lambda: _load_network(f), f, "no pieces")


def _load_network(f):
    return pz_mod._load_network_file(f)


# ---------------------------------------------------------------------------------- public puzzle


def test_public_puzzle_loads_exactly(public_dir):
    p = load_puzzle(public_dir)
    assert (p.n_blocks, p.d, p.h, p.k, p.n_rows) == (48, 48, 96, 1, 10000)
    assert p.notes == []
    assert sorted(p.inp_ids + p.out_ids + [p.last_id]) == list(range(97))
    # float32 values round-trip: shortest float32 text of every loaded value equals the CSV text
    with open(public_dir / "historical_data.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header[:48] == [f"measurement_{i}" for i in range(48)] and header[48] == "pred"
    X, pred = p.X.numpy(), p.pred.numpy()
    for r in range(0, 10000, 97):  # the file holds shortest float32 text, and it comes back unchanged
        assert [str(v) for v in X[r]] + [str(pred[r, 0])] == body[r][:49], r
    # every cell: the loader's float32 equals Python's correctly rounded parse cast to float32
    ref = np.array([[float(v) for v in row[:49]] for row in body], dtype=np.float64).astype(np.float32)
    assert np.array_equal(ref[:, :48], X) and np.array_equal(ref[:, 48:], pred)


def test_public_pieces_pass_the_pickle_scan(public_dir):
    for f in sorted((public_dir / "pieces").glob("piece_*.pth")):
        raw = f.read_bytes()
        z = zipfile.ZipFile(io.BytesIO(raw))
        (name,) = [n for n in z.namelist() if n.endswith("/data.pkl")]
        check_pickle_globals(z.read(name), f)


# ---------------------------------------------------------------------------------------- Puzzle model


def test_puzzle_is_numpy_with_torch_views_and_a_compact_repr(tmp_path):
    root, ids, layers = make_puzzle(tmp_path, n=3, d=4, h=6, rows=16)
    p = load_puzzle(root)
    text = repr(p)
    assert text == f"Puzzle(N=3, d=4, h=6, k=1, rows=16, path={str(root)!r})" and "tensor" not in text
    a = p.arrays
    assert isinstance(a.W_in, np.ndarray) and a.W_in.dtype == np.float32 and a.W_in.flags.c_contiguous
    assert isinstance(p.W_in, torch.Tensor) and p.W_in is p.W_in  # one cached view
    assert np.shares_memory(p.X.numpy(), a.X)  # the view is the array, not a copy
    p.X = torch.zeros(16, 4)  # replacing an attribute replaces the array and its view
    assert isinstance(p.arrays.X, np.ndarray) and float(p.X.abs().sum()) == 0 and p.n_rows == 16
    # built from torch tensors (as tests and generators do): shares their memory
    w = torch.randn(3, 6, 4)
    q = Puzzle(p.inp_ids, p.out_ids, p.last_id, w, p.b_in, p.W_out, p.b_out, p.W_last, p.b_last, p.X, p.pred)
    assert np.shares_memory(q.arrays.W_in, w.numpy()) and torch.equal(q.W_in, w) and q.true is None
    assert repr(q) == "Puzzle(N=3, d=4, h=6, k=1, rows=16)"


def test_blocks_of_inverts_answer_and_load_order_reads_every_format(tmp_path):
    from unshuffle.generate import make_puzzle
    from unshuffle.puzzle import load_order

    g = make_puzzle(tmp_path / "p", blocks=5, dim=8, hidden=12, rows=100, seed=2)
    pz = load_puzzle(tmp_path / "p")
    o_in, o_out = pz.blocks_of(g.answer)
    assert pz.answer(o_in, o_out) == g.answer
    assert sorted(o_in) == sorted(o_out) == list(range(5))
    for name, text in (("list.json", json.dumps(g.answer)), ("solve.json", json.dumps({"permutation": g.answer})),
                       ("answer.json", json.dumps({"answer": g.answer})), ("ids.txt", ",".join(map(str, g.answer))),
                       ("lines.txt", "\n".join(map(str, g.answer)) + "\n")):
        (tmp_path / name).write_text(text)
        assert load_order(tmp_path / name, pz) == g.answer, name
    swapped = list(g.answer)
    swapped[0], swapped[1] = swapped[1], swapped[0]  # an out piece where an in piece runs
    cases = [("short.json", json.dumps(g.answer[:-1]), "expected 11 piece ids"),
             ("swapped.json", json.dumps(swapped), "alternating"),
             ("twice.json", json.dumps(g.answer[:2] * 5 + g.answer[-1:]), "each once"),
             ("words.txt", "first, second", "not an order"),
             ("dict.json", json.dumps({"exact": True}), "not an order"),
             ("strings.json", json.dumps(["a"] * 11), "integer piece ids"),
             ("floaty.json", json.dumps([i + 0.5 for i in g.answer]), "integer piece ids"),
             ("quoted.json", json.dumps([str(i) for i in g.answer]), "integer piece ids")]
    for name, text, pattern in cases:
        (tmp_path / name).write_text(text)
        with pytest.raises(PuzzleError, match=pattern) as e:
            load_order(tmp_path / name, pz)
        assert e.value.path == tmp_path / name
    with pytest.raises(PuzzleError, match="cannot read"):
        load_order(tmp_path / "missing.json", pz)
