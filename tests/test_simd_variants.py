"""The core's other SIMD paths: csrc/scorer.cpp picks 16 floats per vector under __AVX512F__, 8 under __AVX__,
else 4. The installed build uses the build machine's best; this builds the others (setup.py's UNSHUFFLE_SIMD)
into a temporary folder and runs tests/simd_check.py on each in a subprocess: scorer, forwards, probe_sse,
local search and the certificate scorer against the references, and the SIMD width the build really uses.

Each build takes ~30-40 s on 2 cores, so the default run checks the AVX2 build (what a machine without
AVX-512 gets); the portable build (SSE2 baseline) runs when UNSHUFFLE_SIMD_VARIANTS lists it, e.g.
``UNSHUFFLE_SIMD_VARIANTS=avx2,portable python -m pytest tests/test_simd_variants.py``.
"""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("unshuffle._core", reason="C++ extension not built here (no compiler?); CI builds it")

REPO = Path(__file__).resolve().parents[1]
WIDTH = {"avx2": 8, "portable": 4}
SELECTED = os.environ.get("UNSHUFFLE_SIMD_VARIANTS", "avx2").replace(" ", "").split(",")
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _cpu_has(*flags):
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # cannot tell: try
    have = set(text.split())
    return all(f in have for f in flags)


def build(variant: str, out: Path) -> Path:
    """setup.py build_ext with UNSHUFFLE_SIMD=variant into out (nothing is written into the checkout)."""
    env = dict(os.environ, UNSHUFFLE_SIMD=variant, UNSHUFFLE_REQUIRE_EXT="1")
    env.pop("UNSHUFFLE_PORTABLE", None)
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out / "lib"),
                        "--build-temp", str(out / "tmp"), "-j", str(min(4, os.cpu_count() or 1))],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"building the {variant} core failed:\n{r.stderr[-3000:]}"
    found = sorted((out / "lib" / "unshuffle").glob("_core*"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("variant", [
    "avx2",
    pytest.param("portable", marks=pytest.mark.slow),
])
def test_variant_builds_and_matches_the_references(variant, tmp_path):
    if variant not in SELECTED:
        pytest.skip(f"{variant}: set UNSHUFFLE_SIMD_VARIANTS={','.join(SELECTED + [variant])} to build and check it")
    if variant == "avx2" and not (X86 and _cpu_has("avx2", "fma")):
        pytest.skip("the AVX2 build needs an x86-64 CPU with AVX2 and FMA to run")
    so = build(variant, tmp_path)
    r = subprocess.run([sys.executable, str(REPO / "tests" / "simd_check.py"), str(so), str(WIDTH[variant])],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{variant} core:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    assert r.stdout.split() == ["OK", str(WIDTH[variant])]
