"""benchmarks/bench_reach.py, benchmarks/landscape.py and benchmarks/bench_beam.py on one tiny cell (N=4, d=8,
h=16, 300 rows): the distances, the JSONL/JSON/table/plot writing, --resume, the landscape runs and the beam
comparison. No timing assertions."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_reach as br  # noqa: E402
import bench_beam as bb  # noqa: E402
import landscape as ls  # noqa: E402

from unshuffle import native  # noqa: E402

pytest.importorskip("matplotlib")
pytestmark = pytest.mark.skipif(not native.available(),
                                reason="the benchmarks' baseline and landscape searches need the C++ core")

TINY = ["--blocks", "4", "--widths", "8/16", "--regimes", "fast", "--seeds", "7", "--rows", "300",
        "--budget", "3", "--baseline-time-limit", "3", "--name", "tiny"]
PNG = b"\x89PNG\r\n\x1a\n"


def test_lis_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        seq = rng.permutation(int(rng.integers(1, 8))).tolist()
        best = max(r for r in range(len(seq) + 1) for c in itertools.combinations(seq, r) if list(c) == sorted(c))
        assert br.lis_length(seq) == best


def test_distances_known_cases():
    ti, to = [10, 11, 12, 13], [20, 21, 22, 23]  # stack indices of the true order
    assert br.distances(ti, to, ti, to) == {"kendall": 0, "wrong_positions": 0, "insertions": 0, "pairs_wrong": 0}
    # one adjacent swap
    d = br.distances([11, 10, 12, 13], [21, 20, 22, 23], ti, to)
    assert d == {"kendall": 1, "wrong_positions": 2, "insertions": 1, "pairs_wrong": 0}
    # one insertion: the last block moved to the front is 3 inversions but a single insertion
    d = br.distances([13, 10, 11, 12], [23, 20, 21, 22], ti, to)
    assert (d["kendall"], d["wrong_positions"], d["insertions"]) == (3, 4, 1)
    # reversed: every pair inverted
    d = br.distances(ti[::-1], to[::-1], ti, to)
    assert (d["kendall"], d["insertions"]) == (6, 3)
    # order right, two out pieces exchanged
    assert br.distances(ti, [21, 20, 22, 23], ti, to)["pairs_wrong"] == 2


def test_random_moves_distance():
    ti, to = list(range(8)), list(range(8))
    rng = np.random.default_rng(1)
    oi, oo, applied = ls.random_moves(ti, to, 1, "adjacent", rng)
    assert len(applied) == 1 and br.distances(oi, oo, ti, to)["kendall"] == 1
    oi, oo, _ = ls.random_moves(ti, to, 1, "insert", rng)
    assert br.distances(oi, oo, ti, to)["insertions"] == 1
    oi, oo, _ = ls.random_moves(ti, to, 1, "repair", rng)
    d = br.distances(oi, oo, ti, to)
    assert d["pairs_wrong"] == 2 and d["kendall"] == 0


def test_grid_and_budgets():
    specs = br.make_grid([16, 64], ["fast", "wd"], [(48, 96), (32, 64)], [1, 2], other_width_max_n=48)
    assert len(specs) == 2 * 2 * 2 + 2 * 2  # the second width only at N=16
    assert all(s.dim == 48 for s in specs if s.blocks == 64)
    assert br.budget_for(48, 60, 600, 64) == 60 and br.budget_for(64, 60, 600, 64) == 600
    assert specs[0].dirname == "fast_N16_d48_h96_s1"
    with pytest.raises(SystemExit):  # --help exits 0 after printing
        br.main(["--help"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("reach")
    args = TINY + ["--cache", str(root / "cache"), "--out", str(root / "out"), "--threads", "1"]
    assert br.main(args) == 0
    return root, args


def test_reach_writes_table_json_plots(tiny_run, capsys):
    root, args = tiny_run
    out = root / "out"
    recs = [json.loads(line) for line in (out / "tiny.jsonl").read_text().splitlines()]
    assert len(recs) == 1 and recs[0]["status"] == "done"
    r = recs[0]
    assert (root / "cache" / r["dirname"] / "answer.json").is_file()
    assert set(r["unshuffle"]) >= {"exact", "seconds", "mse", "stopped", "matches_answer", "certificate_ratio"}
    assert set(r["baseline"]) >= {"exact", "mse", "seed", "stopped", "distance"}
    assert r["baseline"]["seed"] in ("delta_norm", "fro_asc")
    assert 0 <= r["pairs_right_first"] <= 4
    u = r["unshuffle"]  # which plan order() chose is recorded (its first stage leads the plan's list)
    assert u["kind"] in ("easy", "tame", "deep tame", "explosive") and isinstance(u["plan"], list), u
    if r["unshuffle"]["exact"] and r["unshuffle"]["matches_answer"]:
        assert r["unshuffle"]["distance"] == {"kendall": 0, "wrong_positions": 0, "insertions": 0, "pairs_wrong": 0}
    res = json.loads((out / "tiny.json").read_text())
    (cell,) = res["cells"]
    assert (cell["regime"], cell["blocks"], cell["dim"], cell["hidden"], cell["puzzles"]) == ("fast", 4, 8, 16, 1)
    assert cell["exact"] == int(r["unshuffle"]["exact"]) and cell["baseline_puzzles"] == 1
    for png in ("tiny_exact_rate.png", "tiny_time.png"):
        assert (out / png).read_bytes()[:8] == PNG
    table = br.format_table(res["cells"])
    assert "| fast | 4 | 8/16 | 1 |" in table and len(table.splitlines()) == 3

    # --resume: nothing re-run, even after a kill left half a line at the end of the JSONL
    with open(out / "tiny.jsonl", "a") as f:
        f.write('{"key": "half a rec')
    capsys.readouterr()
    assert br.main(args + ["--resume"]) == 0
    text = capsys.readouterr().out
    assert "1 already in tiny.jsonl, 0 to run" in text and "| fast | 4 | 8/16 |" in text
    assert [json.loads(line) for line in (out / "tiny.jsonl").read_text().splitlines()] == recs


def test_fit_exponent():
    pts = [(n, 0.01 * n**3) for n in (16, 32, 48)]
    assert br.fit_exponent(pts)["exponent"] == pytest.approx(3.0)
    assert br.fit_exponent([(16, 1.0), (16, 2.0)]) is None


def test_landscape_runs_and_start_file(tiny_run, tmp_path):
    root, _ = tiny_run
    (folder,) = (root / "cache").iterdir()
    out = tmp_path / "ls"
    assert ls.main([str(folder), "--k", "1,2", "--kinds", "insert,repair", "--trials", "1", "--schedules",
                    "default,all", "--time-limit", "3", "--out", str(out), "--name", "t"]) == 0
    res = json.loads((out / "t.json").read_text())
    assert len(res["trials"]) == 2 * 2 * 2 and len(res["summary"]) == 8
    assert (out / "t.png").read_bytes()[:8] == PNG
    for t in res["trials"]:
        assert t["returned"] == (t["final"] == {"kendall": 0, "wrong_positions": 0, "insertions": 0, "pairs_wrong": 0})
    # from a given order: the answer itself is a fixed point of every schedule
    assert ls.main([str(folder), "--start", str(folder / "answer.json"), "--schedules", "default,all,adjacent/insert",
                    "--out", str(out), "--name", "s", "--no-plot"]) == 0
    res = json.loads((out / "s.json").read_text())
    assert [t["returned"] for t in res["trials"]] == [True] * 3
    assert [t["schedule"] for t in res["trials"]] == ["default", "all", "adjacent/insert"]
    assert ls.parse_schedule("adjacent/swap+insert")[1] == [[0], [1, 2]]
    with pytest.raises(ValueError):
        ls.parse_schedule("adjacent/teleport")


def test_bench_beam_compares_full_and_screened_on_the_cached_puzzle(tiny_run, tmp_path):
    root, _ = tiny_run
    cache = root / "cache"
    folder = next(p for p in cache.iterdir() if (p / "answer.json").is_file())
    recs = bb.compare(folder, widths=[1, 2], screen_rows=100, keep=2)
    assert [r["width"] for r in recs] == [1, 2]
    for r in recs:
        f, s = r["full"], r["screened"]
        assert f["candidates"] == s["candidates"] > 0  # screening probes every candidate, on fewer rows
        assert r["speedup"] == pytest.approx(f["seconds"] / s["seconds"])
        assert f["best_kendall"] >= 0 and isinstance(r["same_best_order"], bool)
        assert "order" not in f and "order" not in s
    # keep x width covering every candidate of every depth: screening changes nothing
    wide = bb.compare(folder, widths=[2], screen_rows=100, keep=1000)[0]
    assert wide["same_best_order"] and wide["full"]["best_loss"] == pytest.approx(wide["screened"]["best_loss"])
    # the script: table and JSON, atomically written
    assert bb.main(["--blocks", "4", "--dim", "8", "--hidden", "16", "--regimes", "fast", "--seeds", "7",
                    "--rows", "300", "--widths", "2", "--screen-rows", "100", "--cache", str(cache), "--out", str(tmp_path),
                    "--name", "tinybeam", "--threads", "1"]) == 0
    doc = json.loads((tmp_path / "tinybeam.json").read_text())
    assert len(doc["records"]) == 1 and doc["records"][0]["width"] == 2
