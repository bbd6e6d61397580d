"""The noise rule and the separation rule (pure functions), and the sampler on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from qrun import measure
from tests.noise_helpers import cpu_hogs, spin_cpu_s


# -- the noise rule --------------------------------------------------------------------------------------------------
def _classify(other, steal=0.0, capacity=2.0, resolution=0.04):
    return measure.classify_noise(
        other_cpu_s=other, steal_cpu_s=steal, capacity_cpu_s=capacity, resolution_cpu_s=resolution
    )


def test_the_threshold_is_ten_percent_other_or_five_percent_steal_beyond_the_resolution():
    assert measure.NOISY_OTHER_CPU_FRACTION == 0.10 and measure.NOISY_STEAL_FRACTION == 0.05
    # 2 CPU-s of capacity: 10% = 0.20 CPU-s of other processes, 5% = 0.10 of steal; counters resolve 0.04
    assert _classify(0.26)[0] is True and "13%" in _classify(0.26)[1]
    assert _classify(0.24)[0] is None  # above 10%, but not beyond the resolution: cannot tell
    assert _classify(0.16) == (False, "quiet")
    assert _classify(0.17)[0] is None  # below 10%, but not by more than the resolution
    assert _classify(0.0, steal=0.15)[0] is True and "steal" in _classify(0.0, steal=0.15)[1]
    assert _classify(0.0, steal=0.07)[0] is None
    assert _classify(0.0, steal=0.06) == (False, "quiet")
    # a window too short for 10% to exceed the counters' resolution is never called quiet or noisy on a whim
    assert _classify(0.0, capacity=0.2)[0] is None
    assert _classify(0.2, capacity=0.2)[0] is True  # everything else ran: noisy even in a short window


def _snap(wall, own, busy, steal=0.0, n=2):
    return measure.CpuSnapshot(wall_s=wall, own_cpu_s=own, busy_cpu_s=busy, steal_cpu_s=steal, n_cpus=n, loadavg_1m=0.5)


def test_noise_fields_other_is_busy_minus_own_as_a_fraction_of_capacity():
    f = measure.noise_fields(_snap(10.0, 1.0, 100.0), _snap(12.0, 2.9, 103.0, steal=0.02))
    assert f["window_s"] == 2.0 and f["logical_cpus"] == 2 and f["own_cpu_s"] == pytest.approx(1.9)
    assert f["other_cpu_s"] == pytest.approx(1.1) and f["other_cpu_fraction"] == pytest.approx(1.1 / 4, abs=1e-4)
    assert f["steal_fraction"] == pytest.approx(0.005) and f["noisy"] is True
    quiet = measure.noise_fields(_snap(10.0, 1.0, 100.0), _snap(12.0, 2.9, 102.0))
    assert quiet["noisy"] is False and quiet["noise_reason"] == "quiet"


def test_without_proc_stat_the_verdict_is_unknown_not_a_crash(tmp_path):
    for content in (None, "", "cpu  1 2\n", "nonsense\n"):
        path = tmp_path / "stat"
        if content is not None:
            path.write_text(content)
        with measure.NoiseWindow(proc_stat=str(path)) as window:
            pass
        f = window.fields()
        assert f["noisy"] is None and f["noise_reason"].startswith("unknown") and f["other_cpu_s"] is None
        assert f["own_cpu_s"] >= 0 and f["window_s"] >= 0


def test_count_noisy():
    assert measure.count_noisy([{"noisy": True}, {"noisy": False}, {"noisy": None}, {}]) == {
        "samples": 4,
        "noisy": 1,
        "unknown": 2,
    }


# -- the separation rule ---------------------------------------------------------------------------------------------
def test_a_claim_needs_the_worst_of_one_to_beat_the_best_of_the_other():
    better = measure.compare_samples([12, 13, 14], [10, 11, 11.5])
    assert better["verdict"] == "better" and better["ratio"] == pytest.approx(13 / 11)
    assert better["ratio_bounds"] == pytest.approx([12 / 11.5, 14 / 10])
    assert measure.compare_samples([10, 11, 11.5], [12, 13, 14])["verdict"] == "worse"
    overlap = measure.compare_samples([10, 12, 14], [11, 11.5, 13])
    assert overlap["verdict"] == "inside the noise" and overlap["ratio"] is None and overlap["ratio_bounds"] is None
    # lower is better (memory, load time)
    assert measure.compare_samples([1, 2, 3], [4, 5, 6], higher_is_better=False)["verdict"] == "better"


@pytest.mark.parametrize("n", [1, 2])
def test_fewer_than_three_samples_a_side_claim_nothing(n):
    out = measure.compare_samples([100.0] * n, [1.0] * n)  # however large the gap
    assert out == {
        "verdict": "not measured enough",
        "n": [n, n],
        "ratio": None,
        "ratio_bounds": None,
        "higher_is_better": True,
    }
    assert measure.compare_samples([100.0] * 3, [1.0] * n)["verdict"] == "not measured enough"


# -- the sampler on real processes -----------------------------------------------------------------------------------
def test_a_window_beside_cpu_hogs_is_noisy():
    with cpu_hogs(3, seconds=10):
        with measure.NoiseWindow() as window:
            spin_cpu_s(0.3)
    f = window.fields()
    # three busy loops on this machine's CPUs: at least a third of the capacity is theirs on 2 CPUs or more
    assert f["noisy"] is True, f
    assert f["other_cpu_fraction"] > 0.3 and f["own_cpu_s"] >= 0.3
    assert f["own_cpu_s"] < 0.3 + 0.5 * f["window_s"]  # the hogs are not this process's children: not "own"


def test_children_count_as_own_cpu_not_as_other():
    child = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end:\n    pass\n"
    with measure.NoiseWindow() as window:
        subprocess.run([sys.executable, "-c", child], check=True)
    f = window.fields()
    assert f["own_cpu_s"] >= 0.4, f  # the child's 0.4 CPU-s (plus its interpreter start-up) are the tree's own


def test_a_quiet_window_is_not_noisy():
    # The machine is shared: first see whether anything else is running, and skip (saying so) if it is.
    with measure.NoiseWindow() as idle:
        time.sleep(1.0)
    background = idle.fields()
    if background["noisy"] is None and background["other_cpu_s"] is None:
        pytest.skip("no /proc/stat here: the verdict is always unknown")
    if background["other_cpu_fraction"] > measure.NOISY_OTHER_CPU_FRACTION / 2:
        pytest.skip(
            f"the machine is busy: other processes used {background['other_cpu_fraction']:.0%} of the CPU "
            f"during a 1 s idle window (load average {background['loadavg_1m_start']})"
        )
    with measure.NoiseWindow() as window:
        spin_cpu_s(1.0)
    f = window.fields()
    assert f["noisy"] is False, f
    assert f["own_cpu_s"] >= 1.0
