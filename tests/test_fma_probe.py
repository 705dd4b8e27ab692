"""experiments/probe_fma_peak.py: the machine's float32 FMA peak, the ceiling the kernel-gradient
acceptance is compared with."""

import importlib.util
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "experiments" / "probe_fma_peak.py"


def _probe():
    spec = importlib.util.spec_from_file_location("probe_fma_peak", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _openmp_toolchain() -> bool:
    """Whether ``cc`` builds a trivial OpenMP shared library with the probe's flags: the probe
    needs a C compiler with OpenMP, an optional tool; a failure to build the probe's own kernel
    with a working toolchain still fails the test below."""
    if shutil.which("cc") is None:
        return False
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "t.c"
        src.write_text("#include <omp.h>\nint f(void) { return omp_get_max_threads(); }\n")
        r = subprocess.run(["cc", "-O2", "-march=native", "-fopenmp", "-shared", "-fPIC",
                            str(src), "-o", str(Path(d) / "t.so")], capture_output=True)
        return r.returncode == 0


@pytest.mark.skipif(not _openmp_toolchain(),
                    reason="no C compiler with OpenMP (cc -fopenmp) on PATH")
@pytest.mark.parametrize("threads", [1, 2])
def test_the_kernel_runs_every_fma(threads):
    """With b = c = 1 every FMA adds 1 exactly (integers below 2^24 are exact in float32), so the
    checksum counts the FMAs: each of the ACC accumulators of every lane and thread starts at
    (accumulator + thread) and ends ``iters`` higher. A skipped round, accumulator or thread
    changes it by at least 1."""
    probe = _probe()
    so = probe.build()
    lanes, acc, iters = so.lanes(), probe.ACC, 1000
    _, checksum = probe.run(so, iters, threads, b=1.0, c=1.0)
    expected = lanes * sum(k + t + iters for t in range(threads) for k in range(acc))
    assert expected < 2**24
    assert checksum == expected


def test_the_shortfalls_name_each_shape_under_3x_and_compare_with_the_peak():
    probe = _probe()
    shape = {"models": ["m"], "x": [1, 8, 8, 4], "kernel": [3, 3, 4, 4], "strides": [1, 1]}
    conv = {"shapes": [dict(shape, dw_xla_gflops=100.0, dw_ours_gflops=350.0),   # 3.5x: met
                       dict(shape, dw_xla_gflops=100.0, dw_ours_gflops=250.0),   # 2.5x, 300 <= peak
                       dict(shape, dw_xla_gflops=200.0, dw_ours_gflops=300.0),   # 1.5x, 600 > peak
                       dict(shape, dw_xla_gflops=None, dw_ours_gflops=1.0)]}     # not measured
    rows = probe.shortfalls(conv, peak=400.0)
    assert [(r["dw_xla"], r["needed"], r["above_peak"]) for r in rows] == [
        (100.0, 300.0, False), (200.0, 600.0, True)]
    assert rows[0]["ratio"] == 2.5


def test_bad_arguments_are_refused(tmp_path, capsys):
    probe = _probe()
    with pytest.raises(SystemExit):
        probe.main(["--conv-json", str(tmp_path / "missing.json")])
    assert "missing.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        probe.main(["--threads", "0"])
    assert "--threads [0]" in capsys.readouterr().err
