"""benchmarks/gpu_check.sh --cpu-smoke runs every step of the GPU check on tiny shapes under the triton
interpreter, so the script cannot rot between the rare runs on a GPU machine. Here we run it and check that
its JSON has every section, each step succeeded, and its output folder obeys the limits of what a device run
may bring back (<= 8 files, plain names, < 16 MiB each, <= 2 folders deep)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from unshuffle import make_puzzle

    base = tmp_path_factory.mktemp("gpu_check")
    puzzle = base / "puzzle"
    make_puzzle(puzzle, blocks=3, dim=8, hidden=12, rows=200, seed=1)  # stands in for --puzzle (the public one)
    out = base / "out"
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", str(out), "--puzzle", str(puzzle)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=400)
    return r, out


def test_runs_and_writes_only_what_may_come_back(smoke):
    r, out = smoke
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["gpu_check.json", "gpu_check.log"]
    for p in files:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", p.name) and p.stat().st_size < 16 << 20
        assert len(p.relative_to(out).parts) <= 3
    assert "== gpu_check summary (cpu-smoke) ==" in r.stdout


def test_json_has_every_section(smoke):
    _, out = smoke
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["mode"] == "cpu-smoke"
    for name in ("env", "install", "tests", "selftest", "scoring", "precision", "search", "public", "generated", "summary"):
        assert name in doc, name
    for name in ("env", "tests", "selftest", "scoring", "public", "precision", "search", "generated"):
        assert doc["steps"][name]["status"] == "ok", (name, doc["steps"][name])
    assert doc["steps"]["install"]["status"] == "skipped"  # never reinstalls in CI
    assert doc["selftest"]["ok"] is True
    shapes = {s["kinds"]: s["scorers"] for s in doc["scoring"]["shapes"]}
    assert set(shapes) == {"adjacent", "swap_insert"}
    for scorers in shapes.values():
        for name in ("triton_moves", "triton_round", "triton_seq", "torch", "reference", "cpp"):
            assert scorers[name]["same_argmin_as_reference"], name
            assert scorers[name]["max_rel_err_vs_reference"] < 1e-4, name
            assert scorers[name]["cold_s"] > 0 and scorers[name]["warm_s"] > 0
    assert "fp32" in doc["scoring"]["gemm_gflops"] and doc["scoring"]["tuning"]
    prec = doc["precision"]["precisions"]
    assert set(prec) == {"fp32", "tf32", "tf32x3", "bf16"}
    assert prec["fp32"]["planted_recognised_exact"] and prec["fp32"]["argmin_is_planted"]
    assert all(run["stopped"] == "exact" and run["right_answer"] for run in doc["precision"]["search"]["runs"].values())
    assert doc["search"]["single"]["same_trajectory_as_cpp"] is True
    assert len(doc["search"]["crossover"]) >= 2 and "min_round_gflop" in doc["search"]
    assert any(m.get("same_results_as_cpp") for m in doc["search"]["multi_start"])
    runs = doc["public"]["runs"]
    assert {(x["backend"], x["label"]) for x in runs} >= {("triton", "device_cold"), ("triton", "device_warm"), ("cpp", "run")}
    assert all(x["exact"] for x in runs) and doc["public"]["same_answer_all_backends"]
    assert any(x["device_search_used"] for x in runs if x["label"].startswith("device"))
    cli = doc["public"]["cli"]  # the stand-in puzzle is not the public one: exit 1 (sha256 mismatch), exact
    assert [c["backend"] for c in cli] == ["triton"] and all(c["exact"] and c["exit_code"] == 1 for c in cli)
    gen = doc["generated"]["puzzles"]
    assert gen and all(x["right_answer"] for g in gen for x in g["runs"])


def test_solve_step_skips_cleanly_without_a_puzzle(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    f = tmp_path / "public.json"
    assert gpu_check.main(["solve", "--puzzle", str(tmp_path / "absent"), "--json", str(f)]) == 0
    assert "skipped" in json.loads(f.read_text())
    (tmp_path / "steps.tsv").write_text("public\t0\t0.1\t90\n")
    gpu_check.main(["summarize", "--workdir", str(tmp_path), "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["steps"]["public"]["status"] == "skipped" and "skipped" in doc["public"]
