"""auto chooses by a crossover (GFLOP per adjacent round), not by the mere presence of CUDA (issue 10)."""
import json

import pytest
import torch

from unshuffle import backends
from unshuffle.cli import main
from unshuffle.errors import BackendUnavailable


@pytest.fixture
def gpu_here(monkeypatch, tmp_path):
    """Pretend CUDA and triton work, with a private calibration file and no overrides."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(backends, "_probe_triton", lambda: (True, "CUDA device FakeGPU"))
    monkeypatch.setattr(backends, "_probe_cpp", lambda: (True, "loaded"))
    monkeypatch.setattr(backends, "_device_key", lambda: "FakeGPU | torch x | triton y")
    monkeypatch.setenv(backends.CALIBRATION_ENV, str(tmp_path / "calibration.json"))
    monkeypatch.delenv(backends.THRESHOLD_ENV, raising=False)
    monkeypatch.delenv("UNSHUFFLE_BACKEND", raising=False)
    return tmp_path / "calibration.json"


def test_round_gflop():
    # public puzzle: N=48, d=48, h=96, 256 search rows: 4*48*96*256 FLOP per block-row x (48+47+...+2) blocks
    assert backends.round_gflop(48, 48, 96, 256) == pytest.approx(4 * 48 * 96 * 256 * 1175 / 1e9)
    assert backends.round_gflop(1, 48, 96, 256) == 0.0
    assert backends.round_gflop(96, 48, 96, 1024) > 8 * backends.round_gflop(48, 48, 96, 256)


def test_no_cuda_stays_on_cpu_and_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("UNSHUFFLE_BACKEND", raising=False)
    name, why = backends.auto_choice(1e9)
    assert name in ("cpp", "torch") and "no CUDA device" in why


def test_small_or_unknown_searches_stay_on_cpu(gpu_here):
    public = backends.round_gflop(48, 48, 96, 256)
    assert backends.auto_choice(public)[0] == "cpp"  # conservative default: the public puzzle stays on the CPU
    name, why = backends.auto_choice(None)
    assert name == "cpp" and "size is unknown" in why and "not yet measured" in why
    name, why = backends.auto_choice(10 * backends.DEFAULT_TRITON_MIN_GFLOP)
    assert name == "triton" and ">= crossover" in why
    assert backends.resolve_backend("auto", work=None) == "cpp"
    assert backends.resolve_backend("auto", work=1e6) == "triton"


def test_measured_calibration_and_env_override(gpu_here):
    path = backends.save_calibration(2.0, {"note": "test"})
    assert path == gpu_here
    doc = json.loads(path.read_text())
    assert doc["FakeGPU | torch x | triton y"]["min_round_gflop"] == 2.0
    limit, source = backends.triton_threshold()
    assert limit == 2.0 and "measured on this GPU" in source
    assert backends.auto_choice(3.0)[0] == "triton" and backends.auto_choice(1.0)[0] == "cpp"
    # the GPU never won: every search stays on the CPU
    backends.save_calibration(None)
    assert backends.auto_choice(1e6)[0] == "cpp"
    # an entry for another device is ignored; the number in the environment beats everything
    path.write_text(json.dumps({"OtherGPU": {"min_round_gflop": 0.0}}))
    assert backends.triton_threshold()[1].startswith("conservative default")
    gpu_here.write_text("not json")
    assert backends.triton_threshold()[0] == backends.DEFAULT_TRITON_MIN_GFLOP
    import os

    os.environ[backends.THRESHOLD_ENV] = "0.5"
    try:
        assert backends.triton_threshold() == (0.5, f"{backends.THRESHOLD_ENV}=0.5")
        assert backends.auto_choice(1.0)[0] == "triton"
    finally:
        del os.environ[backends.THRESHOLD_ENV]


def test_without_cpp_the_gpu_pays_off_sooner(gpu_here, monkeypatch):
    monkeypatch.setattr(backends, "_probe_cpp", lambda: (False, "not built"))
    limit = backends.DEFAULT_TRITON_MIN_GFLOP
    assert backends.auto_choice(limit / 2)[0] == "triton"
    assert backends.auto_choice(limit / (2 * backends.TORCH_VS_CPP_SLOWDOWN))[0] == "torch"
    assert backends.auto_choice(None)[0] == "torch"


def test_explicit_unavailable_still_raises_and_env_override_explained(monkeypatch):
    monkeypatch.setattr(backends, "_probe_triton", lambda: (False, "no CUDA device (test)"))
    with pytest.raises(BackendUnavailable, match="'triton' was requested but is unavailable: no CUDA device"):
        backends.get_scorer("triton", work=1e9)
    monkeypatch.setenv("UNSHUFFLE_BACKEND", "torch")
    assert backends.explain_auto() == "set by UNSHUFFLE_BACKEND=torch"
    assert backends.get_scorer("auto").name == "torch"


def test_info_says_why(capsys, monkeypatch):
    monkeypatch.delenv("UNSHUFFLE_BACKEND", raising=False)
    assert main(["info"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("auto backend:")][0]
    name, why = backends.auto_choice()
    assert line == f"auto backend: {name} ({why})"
