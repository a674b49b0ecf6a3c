"""Timing and table helpers for the benchmarks."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(__file__))


def quiet_logs() -> None:
    from dagrun.run.logs import configure
    configure(json=True, level=logging.ERROR)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """Best wall time of ``repeat`` runs (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def run_plan(plan, workers: int, observers=(), home=None, home_root=None):
    from dagrun.run.runner import Runner
    result = Runner(plan, {"id": "bench", "home_dir": home}, max_workers=workers, observers=list(observers),
                    home_root=home_root).run()
    assert result.success, result.error
    return result
