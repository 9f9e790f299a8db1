"""Fuzzing the loader: whatever the bytes, only PuzzleError may come out - never another exception, a
crash or a hang.

Inputs: random bytes under each piece suffix; valid .pth/.safetensors/.npz bytes truncated, bit-flipped
and spliced; random pickles (nested Python objects, protocols 0-5) both bare and inside a valid torch zip;
torch.save of random nested objects with tensors; random network files; random and mutated CSV text.

Budget in examples, not seconds: 2,050 cases by default (each test's max_examples; set UNSHUFFLE_FUZZ_SCALE=10
for a longer run), every input bounded in size (a few KB), so the work is the same on any machine; ~30 s on 2
busy cores. No per-example deadline: wall-clock limits fail at random on a loaded machine (a busy core can
stall one example for seconds) and a slow but finishing case is not a bug here. What catches a hang is a
faulthandler watchdog per test, far beyond any honest run (HANG_SECONDS): it kills the run with a traceback
even inside C code, where no Python-level timeout can reach. The number of cases run is printed in pytest's
terminal summary ("fuzz loading: N cases ...").
"""
from __future__ import annotations

import faulthandler
import io
import os
import pickle
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unshuffle import PuzzleError, load_puzzle
from unshuffle.csvdata import read_csv
from unshuffle.puzzle import _load_network_file, _load_piece, _read_csv
from unshuffle.tensorfiles import read_tensor_file, read_torch_reference

SCALE = float(os.environ.get("UNSHUFFLE_FUZZ_SCALE", "1"))
# A test still running after this long is hung, not slow: its 100-350 bounded cases take ~1-10 s on 2 busy
# cores, so this is ~50x the slowest test's time, scaled with the number of cases.
HANG_SECONDS = int(600 * max(1.0, SCALE))
CASES: Counter = Counter()
STATS = {"seconds": 0.0}


def fuzz_settings(n: int):
    return settings(
        max_examples=max(1, int(n * SCALE)),
        deadline=None,  # see the module docstring: bounded inputs, a budget in examples, a hang watchdog
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


class _FuzzSummary:
    """Registered as a plugin from this module, so the count shows without -s and without a conftest hook."""

    def pytest_terminal_summary(self, terminalreporter):
        if not CASES:
            return
        total = sum(CASES.values())
        terminalreporter.write_sep("-", "fuzz loading")
        terminalreporter.write_line(
            f"fuzz loading: {total} cases in {STATS['seconds']:.1f} s ("
            + ", ".join(f"{k} {v}" for k, v in sorted(CASES.items())) + ")"
        )


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    pm = request.config.pluginmanager
    if not pm.has_plugin("unshuffle-fuzz-loading-summary"):
        pm.register(_FuzzSummary(), "unshuffle-fuzz-loading-summary")
    yield


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        STATS["seconds"] += time.perf_counter() - t0


@pytest.fixture(scope="module")
def work():
    with tempfile.TemporaryDirectory(prefix="unshuffle-fuzz-") as d:
        yield Path(d)


def only_puzzle_error(fn, kind: str):
    """Run fn; a PuzzleError or success is fine, anything else fails the test (hypothesis shrinks it)."""
    CASES[kind] += 1
    try:
        fn()
    except PuzzleError as e:
        assert str(e)  # every message says something
        return False
    return True


# ------------------------------------------------------------------------------------- seed files


def _pth_bytes(w=None, b=None) -> bytes:
    buf = io.BytesIO()
    torch.save({"weight": torch.randn(6, 4) if w is None else w, "bias": torch.randn(6) if b is None else b}, buf)
    return buf.getvalue()


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"weight": torch.randn(6, 4), "bias": torch.randn(6)})


def _npz_bytes(compressed=False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, weight=np.ones((6, 4), np.float32), bias=np.ones(6, np.float32))
    return buf.getvalue()


SEEDS = {
    "pth": _pth_bytes(),
    "safetensors": _safetensors_bytes(),
    "npz": _npz_bytes(),
    "npz_compressed": _npz_bytes(True),
}
SUFFIX = {"pth": "pth", "safetensors": "safetensors", "npz": "npz", "npz_compressed": "npz"}


def _torch_zip_with_pickle(pkl: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(SEEDS["pth"]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pkl if info.filename.endswith("/data.pkl") else src.read(info))
    return out.getvalue()


def _write(work: Path, name: str, data: bytes) -> Path:
    f = work / name
    f.write_bytes(data)
    return f


# ------------------------------------------------------------------------------------- strategies

mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flip"), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("splice"), st.floats(0, 1), st.binary(max_size=64)),
    st.tuples(st.just("cut"), st.floats(0, 1), st.floats(0, 0.2)),
)


def mutate(data: bytes, m) -> bytes:
    n = len(data)
    kind = m[0]
    if kind == "truncate":
        return data[: int(m[1] * n)]
    if kind == "flip":
        b = bytearray(data)
        for pos, x in m[1]:
            i = min(int(pos * n), n - 1)
            b[i] ^= x
        return bytes(b)
    if kind == "splice":
        i = int(m[1] * n)
        return data[:i] + m[2] + data[i:]
    i = int(m[1] * n)
    return data[:i] + data[i + int(m[2] * n) + 1 :]


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=12),
    st.binary(max_size=12), st.sampled_from(["weight", "bias", "piece_0.weight", "piece_0.bias"]),
    st.complex_numbers(allow_nan=True), st.datetimes(),
    # objects whose pickles reference globals: all must be refused by the scan or by torch
    st.sampled_from([Path("x"), np.float32(1.5), np.arange(3), Counter(a=1), bytearray(b"ab"), range(3),
                     slice(1, 2), torch.zeros(2), torch.nn.Parameter(torch.ones(1)), ValueError("x")]),
)
py_objects = st.recursive(
    scalars,
    lambda ch: st.one_of(
        st.lists(ch, max_size=4),
        st.tuples(ch, ch),
        st.dictionaries(st.one_of(st.text(max_size=8), st.sampled_from(["weight", "bias"]), st.integers()), ch, max_size=4),
        st.frozensets(st.one_of(st.integers(), st.text(max_size=4)), max_size=3),
    ),
    max_leaves=12,
)


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.bool]))
    shape = draw(st.lists(st.integers(0, 5), max_size=3))
    t = torch.zeros(shape, dtype=dtype)
    if t.numel() and dtype.is_floating_point:
        t = torch.randn(shape).to(dtype)
        if draw(st.booleans()):
            t.view(-1)[0] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 1.0]))
    return t


torch_objects = st.recursive(
    st.one_of(scalars, tensors()),
    lambda ch: st.one_of(
        st.lists(ch, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(["weight", "bias", "extra"]), st.text(max_size=6)), ch, max_size=3),
    ),
    max_leaves=6,
)


# ------------------------------------------------------------------------------------- piece fuzzers


@fuzz_settings(250)
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(["pth", "pt", "safetensors", "npz"]),
       prefix=st.sampled_from([b"", b"PK\x03\x04", b"\x80\x02", b"\x80\x05", b"\x08\x00\x00\x00\x00\x00\x00\x00{"]))
def test_random_bytes(work, data, suffix, prefix):
    f = _write(work, f"piece_0.{suffix}", prefix + data)
    assert not only_puzzle_error(lambda: _load_piece(f), "random bytes")


@fuzz_settings(350)
@given(seed=st.sampled_from(sorted(SEEDS)), m=mutation)
def test_mutated_valid_files(work, seed, m):
    f = _write(work, f"piece_0.{SUFFIX[seed]}", mutate(SEEDS[seed], m))
    only_puzzle_error(lambda: _load_piece(f), "mutated valid files")


@fuzz_settings(250)
@given(obj=py_objects, protocol=st.integers(0, 5), wrap=st.booleans())
def test_random_pickles(work, obj, protocol, wrap):
    pkl = pickle.dumps(obj, protocol=protocol)
    f = _write(work, "piece_0.pth", _torch_zip_with_pickle(pkl) if wrap else pkl)
    # a random object is never {weight: tensor, bias: tensor}, so this must be refused
    assert not only_puzzle_error(lambda: _load_piece(f), "random pickles")


@fuzz_settings(150)
@given(obj=torch_objects)
def test_torch_save_random_objects(work, obj):
    f = work / "piece_0.pth"
    torch.save(obj, f)
    ok = only_puzzle_error(lambda: _load_piece(f), "torch.save random objects")
    if ok:  # only a dict of exactly two finite float tensors forming a layer may load
        assert isinstance(obj, dict) and set(obj) == {"weight", "bias"}


@fuzz_settings(100)
@given(entries=st.dictionaries(
    st.one_of(st.from_regex(r"piece_0{0,2}[0-6]\.(weight|bias)", fullmatch=True), st.text(max_size=6)),
    tensors(), max_size=8),
    fmt=st.sampled_from(["pth", "safetensors", "npz"]))
def test_random_network_files(work, entries, fmt):
    f = work / f"pieces.{fmt}"
    try:
        if fmt == "pth":
            torch.save(entries, f)
        elif fmt == "safetensors":
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in entries.items()}, str(f))
        else:
            np.savez(f, **{k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for k, v in entries.items()})
    except Exception:  # the writer itself rejects some inputs (e.g. odd key names); nothing to load then
        return
    only_puzzle_error(lambda: _load_network_file(f), "random network files")


# ------------------------------------------------------------------------------------- CSV fuzzers

CSV_TOKENS = ["measurement_0", "measurement_1", "measurement_01", "measurement_3", "pred", "pred_0", "pred_1",
              "true", "x", "", "1", "-2.5", "1e39", "1e400", "nan", "inf", "-inf", "abc", "True", '"', '"1,2"',
              "0x10", "1_0", " 3 ", "\t", "#"]


@st.composite
def csv_texts(draw):
    if draw(st.booleans()):
        return draw(st.text(st.sampled_from(list("0123456789.,-+eE\n\r\"' abcnafipr_tmsu\t;#\x00é")), max_size=400))
    width = draw(st.integers(1, 5))
    rows = draw(st.lists(st.lists(st.sampled_from(CSV_TOKENS), min_size=max(0, width - 1), max_size=width + 1),
                         max_size=6))
    header = draw(st.lists(st.sampled_from(CSV_TOKENS[:8]), min_size=width, max_size=width))
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return eol.join([",".join(header)] + [",".join(r) for r in rows]) + draw(st.sampled_from(["", eol, eol * 2]))


@fuzz_settings(250)
@given(text=csv_texts(), encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_random_csv(work, text, encoding):
    f = work / "data.csv"
    f.write_bytes(text.encode(encoding, errors="replace"))
    only_puzzle_error(lambda: _read_csv(f), "random CSV")


@pytest.fixture(scope="module")
def small_puzzle(work):
    """Valid pieces for d=2, k=1 (N=2, h=3), so fuzzed CSVs also reach the shape/width checks."""
    root = work / "puzzle"
    (root / "pieces").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 2), (2, 3), (3, 2), (2, 3), (1, 2)]
    for i, (r, c) in enumerate(shapes):
        torch.save({"weight": torch.randn(r, c, generator=g), "bias": torch.randn(r, generator=g)},
                   root / "pieces" / f"piece_{i}.pth")
    return root


@fuzz_settings(100)
@given(text=csv_texts())
def test_random_csv_through_load_puzzle(small_puzzle, text):
    (small_puzzle / "historical_data.csv").write_text(text, errors="replace")
    ok = only_puzzle_error(lambda: load_puzzle(small_puzzle), "random CSV via load_puzzle")
    if ok:
        p = load_puzzle(small_puzzle)
        assert p.d == 2 and p.k == 1 and p.n_rows >= 1 and bool(torch.isfinite(p.X).all())


# ------------------------------------------------------------------ fast readers against the references


def _outcome(fn):
    """('refused',) or ('ok', comparable content) of a reader call; only PuzzleError may escape as refusal."""
    try:
        obj = fn()
    except PuzzleError:
        return ("refused",)
    if isinstance(obj, tuple):  # read_csv: (X, pred, true, path)
        return ("ok", tuple(None if a is None else (a.dtype.str, a.shape, a.tobytes()) for a in obj[:3]))
    return ("ok", {k: (v.dtype, v.array.shape, np.ascontiguousarray(v.array).tobytes()) for k, v in obj.items()})


@fuzz_settings(150)
@given(obj=torch_objects)
def test_restricted_reader_matches_torch_load(work, obj):
    """The numpy reader of .pth files accepts exactly what torch.load(weights_only=True) accepts (after the
    same scan) and yields the same tensors: dtype, shape and bytes."""
    f = work / "piece_0.pth"
    torch.save(obj, f)
    CASES["reader vs torch.load: torch.save objects"] += 1
    got = _outcome(lambda: read_tensor_file(f))
    assert got == _outcome(lambda: read_tensor_file(f, read_torch_reference))


@fuzz_settings(200)
@given(m=mutation, which=st.sampled_from(["pth", "pth_views"]))
@example(m=("flip", [(0.832567271569481, 16)]), which="pth")  # torch.load returned garbage here (above)
def test_restricted_reader_on_mutated_files(work, m, which):
    """Corrupted archives: only PuzzleError; whatever the reader accepts is what torch.load reads from the
    same bytes or, where torch's stricter zip reader refuses a flip in zip metadata that Python's zipfile
    does not check (CRCs of the records read are checked), exactly the tensors of the intact file."""
    f = _write(work, "piece_0.pth", mutate(SEED_PTH[which], m))
    CASES["reader vs torch.load: mutated files"] += 1
    got = _outcome(lambda: read_tensor_file(f))
    if got[0] == "ok":
        ref = _outcome(lambda: read_tensor_file(f, read_torch_reference))
        if ref != got:  # torch refused, or (seen once: a flipped central-directory byte) torch.load returned
            # uninitialised memory for a storage; then the reader must have read the intact file's tensors
            intact = _write(work, "piece_1.pth", SEED_PTH[which])
            assert got == _outcome(lambda: read_tensor_file(intact)), (got, ref)


def _views_pth() -> bytes:
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    buf = io.BytesIO()  # views sharing one storage, a transposed one and an offset one
    torch.save({"weight": base.t()[1:], "bias": base[2, 1:5], "half": base.half()[0], "bf": base.bfloat16()[:, 2]}, buf)
    return buf.getvalue()


SEED_PTH = {"pth": SEEDS["pth"], "pth_views": _views_pth()}


def test_restricted_reader_views_dtypes_and_byte_order(work):
    f = _write(work, "piece_0.pth", SEED_PTH["pth_views"])
    got = read_tensor_file(f)
    assert _outcome(lambda: got) == _outcome(lambda: read_tensor_file(f, read_torch_reference))
    assert got["bf"].dtype == "torch.bfloat16" and got["bf"].array.dtype == np.float32
    # a big-endian archive (torch writes its byte order into the zip) reads to the same values
    src = zipfile.ZipFile(io.BytesIO(SEEDS["pth"]))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in info.filename and not info.filename.endswith(".pkl"):
                data = np.frombuffer(data, "<f4").astype(">f4").tobytes()
            dst.writestr(info.filename, data)
    g = _write(work, "piece_1.pth", out.getvalue())
    little = read_tensor_file(_write(work, "piece_2.pth", SEEDS["pth"]))
    big = read_tensor_file(g)
    assert all(np.array_equal(big[k].array, little[k].array) and big[k].array.dtype.isnative for k in big)


NUMBER_FORMS = [repr, str, lambda v: f"{v:.3e}", lambda v: f"{v:.9g}", lambda v: f"{v:+.4f}", lambda v: f"{v:E}",
                lambda v: str(int(v)) if np.isfinite(v) else repr(v), lambda v: f"{v:.0f}.", lambda v: f"{v:.2f}".replace("0.", ".", 1)]


@st.composite
def numeric_csvs(draw):
    """Mostly well-formed numeric CSVs (the fast parser's domain) with the occasional odd cell or line."""
    d, k = draw(st.integers(1, 4)), draw(st.integers(1, 2))
    header = [f"measurement_{i}" for i in range(d)] + (["pred"] if k == 1 else [f"pred_{i}" for i in range(k)])
    if draw(st.booleans()):
        header.append(draw(st.sampled_from(["true", "x", "true_0"])))
    finite = st.floats(-1e6, 1e6, allow_nan=False)
    floats = st.one_of(finite, finite, finite, st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from([0.0, -0.0, 1e-45, 3.4028235e38, 3.5e38, 1e-320]))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        cells = [draw(st.sampled_from(NUMBER_FORMS))(v) if abs(v) < 1e15 or not draw(st.booleans()) else repr(v)
                 for v in draw(st.lists(floats, min_size=len(header), max_size=len(header)))]
        if draw(st.integers(0, 9)) == 0:
            cells[draw(st.integers(0, len(cells) - 1))] = draw(st.sampled_from(CSV_TOKENS + ["-0", "00012", "1" * 20]))
        rows.append(",".join(cells))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    return eol.join([",".join(header)] + rows) + draw(st.sampled_from(["", eol, eol * 2]))


@fuzz_settings(250)
@given(text=st.one_of(numeric_csvs(), csv_texts()))
def test_fast_csv_matches_pandas(work, text):
    """The strict C++ CSV parse gives exactly pandas' arrays and notes, or steps aside for pandas."""
    f = work / "data.csv"
    f.write_text(text, errors="replace")
    CASES["fast CSV vs pandas"] += 1
    notes_fast, notes_ref = [], []
    got = _outcome(lambda: read_csv(f, notes_fast))
    want = _outcome(lambda: read_csv(f, notes_ref, fast=False))
    assert got == want and notes_fast == notes_ref
