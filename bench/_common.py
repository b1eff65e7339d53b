"""Helpers shared by the bench scripts: percentiles, plain-text tables, a throwaway PostgreSQL and
starting a server process whose readiness is read from its own log."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

READY_LINE = "Application startup complete"


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned first column and right-aligned others, separated by two spaces."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 20 s."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def server_process(command: Sequence[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen[str]]:
    """Start `command`, block on its stderr until uvicorn logs that startup is complete, keep
    draining its output in a thread (a full pipe would stall the server), stop it afterwards."""
    process = subprocess.Popen(
        list(command), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None and process.stdout is not None
    seen: list[str] = []
    for line in process.stderr:  # blocking read, line by line
        seen.append(line)
        if READY_LINE in line:
            break
    else:
        process.wait()
        raise RuntimeError(f"{name} exited before it was ready (code {process.returncode}):\n{''.join(seen)}")
    tail: list[str] = []

    def drain(stream: IO[str]) -> None:
        for line in stream:
            tail.append(line)
            del tail[:-200]

    drains = [
        threading.Thread(target=drain, args=(s,), daemon=True) for s in (process.stderr, process.stdout)
    ]
    for thread in drains:
        thread.start()
    try:
        yield process
    finally:
        stop_process(process)
        for thread in drains:
            thread.join(timeout=5)
        # Summarise tracebacks by their final line (e.g. a job cancelled at shutdown).
        finals = [
            line.strip()
            for previous, line in itertools.pairwise(tail)
            if previous.startswith(" ") and line[:1].isalpha() and ("Error" in line or "Exception" in line)
        ]
        if finals:
            print(
                f"  ({name} logged {len(finals)} traceback(s) while running or stopping; last: {finals[-1]})"
            )
