"""How every benchmark reports itself: a calibration figure, the load average, and a failure that says so."""

import subprocess
import sys

from tests.support.processes import REPO

FAILING = """
from bench import common
common.progress["consoles_connected"] = 781
common.progress["errors"] = {"refused": 3, "timeout": 2}
def main():
    common.figure("first_figure", 1.5, "ms")
    raise TimeoutError("not all consoles had their snapshot within 120 s")
common.run(main)
"""


def test_it_prints_what_a_failed_benchmark_has_and_exits_non_zero_without_a_traceback():
    done = subprocess.run([sys.executable, "-c", FAILING], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    out = done.stdout
    assert "calibration_loop: " in out and "load_average: " in out
    assert "first_figure: 1.50 ms" in out
    assert "so_far_consoles_connected: 781" in out
    assert "so_far_errors: refused=3, timeout=2" in out
    assert out.rstrip().endswith("failed: TimeoutError: not all consoles had their snapshot within 120 s")
    assert "Traceback" not in out + done.stderr


def test_it_prints_the_calibration_and_load_at_both_ends_of_a_run_that_succeeds():
    done = subprocess.run([sys.executable, "-c", "from bench import common\ncommon.run(lambda: None)"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("calibration_loop: ") == 2 and "end_load_average: " in done.stdout
