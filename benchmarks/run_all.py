"""``make bench``: every benchmark, one table at the end (machine, date, command in the header)."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402
import anchors  # noqa: E402
import labels_scaling  # noqa: E402
import memory  # noqa: E402
import record_overhead  # noqa: E402
import report_speed  # noqa: E402
import stats_cost  # noqa: E402
from common import print_table  # noqa: E402


def main() -> None:
    print(f"gateprobe benchmarks, {datetime.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}")
    rows = []
    rows += record_overhead.main([])
    rows += stats_cost.main([])
    rows += anchors.main([])
    figures = accuracy.main([])
    rows += [{"benchmark": f"accuracy: {k}", "median": v, "min": v, "max": v,
              "target": "<= 0.005" if k.endswith("auc_abs_error_p99") else "<= 0.02" if k.endswith("iou_rel_error_p90")
              else ""}
             for k, v in figures.items()]
    rows += memory.main([])
    rows += labels_scaling.main([])
    rows += report_speed.main([])
    here = Path(__file__).resolve().parent
    for script in ("dashboard_latency.py", "ray_scaling.py"):  # they print their own tables
        print(f"\n== {script}", flush=True)
        subprocess.run([sys.executable, str(here / script)], cwd=here, check=False)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
