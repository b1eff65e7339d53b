"""How fast this machine runs Python right now: CPU seconds for a fixed workload.

The development machines are shared virtual machines whose speed changes during a day (this
workload took from 4.3 to 7.5 s on one day). Run this before and after a benchmark and note
the figure beside the results, so that figures from different runs can be compared.

    .venv/bin/python bench/calibrate.py
"""

from __future__ import annotations

import json
import time


def main() -> None:
    started = time.process_time()
    encoded = {}
    for number in range(1_500_000):
        encoded[str(number)] = json.dumps([number, number * 2])
    print(f"calibration: {time.process_time() - started:.2f} s of CPU (1.5 million json.dumps)")


if __name__ == "__main__":
    main()
