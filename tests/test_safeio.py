"""Atomic writes: the destination is the old file or the complete new one; no temp file is left behind."""
from __future__ import annotations

import os
import stat

import pytest

from unshuffle import safeio
from unshuffle.safeio import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


def _leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_text_and_bytes(tmp_path):
    f = tmp_path / "a.txt"
    atomic_write_text(f, "héllo\r\nworld\n")
    assert f.read_bytes() == "héllo\r\nworld\n".encode()  # newlines untranslated
    atomic_write_text(f, "second")
    assert f.read_text() == "second"
    g = tmp_path / "b.bin"
    atomic_write_bytes(g, bytes(range(256)))
    assert g.read_bytes() == bytes(range(256))
    assert _leftovers(tmp_path, {"a.txt", "b.bin"}) == []


def test_interrupted_write_keeps_old_file_and_no_temp(tmp_path):
    f = tmp_path / "answer.txt"
    f.write_text("old")

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_open(f, "w") as fh:
            fh.write("new, half writ")
            raise Boom()
    assert f.read_text() == "old"
    assert _leftovers(tmp_path, {"answer.txt"}) == []


def test_failure_inside_write_call_keeps_old_file(tmp_path, monkeypatch):
    f = tmp_path / "data.bin"
    f.write_bytes(b"old")

    def replace_fails(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(safeio.os, "replace", replace_fails)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(f, b"new" * 1000)
    assert f.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"data.bin"}) == []


def test_keyboard_interrupt_mid_write_cleans_up(tmp_path):
    f = tmp_path / "x.txt"
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(f, "w") as fh:
            fh.write("partial")
            raise KeyboardInterrupt
    assert not f.exists() and _leftovers(tmp_path, set()) == []


def test_atomic_path_for_other_libraries(tmp_path):
    f = tmp_path / "plot.png"
    f.write_bytes(b"old png")
    with atomic_path(f) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp != f
        tmp.write_bytes(b"new png")  # e.g. fig.savefig(tmp)
        assert f.read_bytes() == b"old png"  # nothing visible until the block ends
    assert f.read_bytes() == b"new png"
    with pytest.raises(RuntimeError):
        with atomic_path(f) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("savefig failed")
    assert f.read_bytes() == b"new png" and _leftovers(tmp_path, {"plot.png"}) == []


def test_atomic_path_when_library_deletes_temp(tmp_path):
    f = tmp_path / "out.npy"
    with pytest.raises(FileNotFoundError):
        with atomic_path(f) as tmp:
            tmp.unlink()
    assert not f.exists() and _leftovers(tmp_path, set()) == []


def test_with_matplotlib_savefig(tmp_path):
    mpl = pytest.importorskip("matplotlib", reason="matplotlib not installed")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    f = tmp_path / "fig.png"
    with atomic_path(f) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and _leftovers(tmp_path, {"fig.png"}) == []


def test_permissions_follow_old_file_or_umask(tmp_path):
    f = tmp_path / "p.txt"
    atomic_write_text(f, "a")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    os.chmod(f, 0o640)
    atomic_write_text(f, "b")
    assert stat.S_IMODE(f.stat().st_mode) == 0o640


def test_read_modes_refused(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "x", "r"):
            pass
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "x", "a"):
            pass
