import subprocess
import sys

from tide.workers.collector import YOUNG_THRESHOLD

PROBE = """
import gc
from tide.workers.collector import settle_after_startup
startup = [[] for _ in range(1000)]
settle_after_startup()
print(gc.get_threshold()[0], gc.get_freeze_count())
"""


def test_worker_collector_freezes_startup_objects_and_collects_young_ones_less_often():
    # A fresh interpreter: the settings are process-wide and must not leak into the test process.
    out = subprocess.run([sys.executable, "-P", "-c", PROBE], capture_output=True, text=True, check=True).stdout
    young, frozen = map(int, out.split())
    assert young == YOUNG_THRESHOLD
    assert frozen >= 1000
