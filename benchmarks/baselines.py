"""Reference schedulers measured in the same run as dagrun.

- ``graphlib_pool``: the parallel pattern of the ``graphlib`` docs
  (TopologicalSorter + ThreadPoolExecutor + wait(FIRST_COMPLETED)), with the
  number of tasks in flight bounded by the worker count like dagrun's.
- ``dask_threaded``: dask's threaded scheduler (``dask.threaded.get``).
"""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from graphlib import TopologicalSorter
from typing import Callable


def graphlib_pool(deps: dict[str, list[str]], fn: Callable[[str], object], workers: int) -> None:
    sorter = TopologicalSorter(deps)
    sorter.prepare()
    ready: list[str] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running: dict = {}
        while sorter.is_active():
            ready.extend(sorter.get_ready())
            while ready and len(running) < workers:
                node = ready.pop()
                running[pool.submit(fn, node)] = node
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                future.result()
                sorter.done(running.pop(future))


def dask_threaded(deps: dict[str, list[str]], fn: Callable[..., object], workers: int) -> None:
    import dask.threaded
    graph = {sid: (fn, *parents) for sid, parents in deps.items()}
    dask.threaded.get(graph, list(deps), num_workers=workers)
