"""Build script: the C++ extension ``unshuffle._core`` and the package layout.

The extension is optional for users: if it fails to build, the install goes on and the package falls back
to its torch paths. Set ``UNSHUFFLE_REQUIRE_EXT=1`` (CI does) to make a failed build fail the install, so a
green CI cannot hide a broken extension.
"""
import os
import sys
from glob import glob

from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pybind11 is a build requirement; only a bare `python setup.py` can get here
    Pybind11Extension = None

REQUIRE_EXT = os.environ.get("UNSHUFFLE_REQUIRE_EXT", "") not in ("", "0", "false", "False")


class OptionalBuildExt(build_ext):
    """build_ext that tolerates a failed compile unless UNSHUFFLE_REQUIRE_EXT is set."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler/setup failure
            self._fail(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)

    def _fail(self, exc):
        if REQUIRE_EXT:
            raise
        sys.stderr.write(
            f"WARNING: unshuffle C++ extension not built ({exc}); falling back to torch paths.\n"
        )


# Instruction set of the core (csrc/scorer.cpp picks its SIMD width from the compiler's macros):
#   UNSHUFFLE_SIMD=native (default): -march=native (AVX-512 where the build machine has it);
#   UNSHUFFLE_SIMD=avx2: AVX2 + FMA (8-wide, __AVX__) for machines without AVX-512;
#   UNSHUFFLE_SIMD=portable (or UNSHUFFLE_PORTABLE=1): the compiler's baseline (SSE2 on x86-64, 4-wide).
# tests/test_simd_variants.py builds the non-native ones into a temporary folder and checks them.
SIMD_FLAGS = {"native": ["-march=native"], "avx2": ["-mavx2", "-mfma"], "portable": []}
SIMD = os.environ.get("UNSHUFFLE_SIMD", "portable" if os.environ.get("UNSHUFFLE_PORTABLE") else "native")
if SIMD not in SIMD_FLAGS:
    raise RuntimeError(f"UNSHUFFLE_SIMD={SIMD!r}: use one of {', '.join(SIMD_FLAGS)}")

ext_modules = []
if Pybind11Extension is not None and glob("csrc/*.cpp"):
    extra = ["-O3", *SIMD_FLAGS[SIMD], "-ffast-math", "-fno-finite-math-only", "-fopenmp"]
    ext_modules.append(
        Pybind11Extension(
            "unshuffle._core",
            sorted(glob("csrc/*.cpp")),
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    )
elif REQUIRE_EXT:
    raise RuntimeError("UNSHUFFLE_REQUIRE_EXT is set but pybind11 or csrc/*.cpp is missing")

setup(
    packages=["unshuffle", "unshuffle.kernels"],
    package_dir={"unshuffle": "unshuffle", "unshuffle.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
    zip_safe=False,
)
