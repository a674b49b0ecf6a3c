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


def sleeps_alone(count: int, seconds: float, workers: int) -> float:
    """No scheduler at all: ``workers`` pre-started threads each sleep their
    share of ``count`` sleeps of ``seconds``, back to back. What the machine's
    threads take for the sleeps alone (each wake-up takes the interpreter
    lock); no scheduler of threads can beat it. Returns the makespan."""
    import threading
    import time
    shares = [count // workers + (i < count % workers) for i in range(workers)]
    start = threading.Barrier(workers + 1)

    def sleeper(share: int) -> None:
        start.wait()
        for _ in range(share):
            time.sleep(seconds)

    threads = [threading.Thread(target=sleeper, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    return time.perf_counter() - began


class BareThreads:
    """The machine's floor for any threaded Python scheduler: Kahn's
    algorithm with pre-started threads and one completion queue, no
    bookkeeping at all. Threads persist across calls (like dagrun's pool)."""

    def __init__(self, workers: int):
        import queue
        import threading
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(workers):
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, node = self.work.get()
            fn(node)
            self.done.put(node)

    def run(self, deps: dict[str, list[str]], fn: Callable[[str], object], workers: int) -> None:
        children: dict[str, list[str]] = {n: [] for n in deps}
        unmet = {n: len(p) for n, p in deps.items()}
        for n, parents in deps.items():
            for p in parents:
                children[p].append(n)
        ready = [n for n, c in unmet.items() if c == 0]
        running = 0
        left = len(deps)
        while left:
            while ready and running < workers:
                self.work.put((fn, ready.pop()))
                running += 1
            node = self.done.get()
            running -= 1
            left -= 1
            for child in children[node]:
                unmet[child] -= 1
                if unmet[child] == 0:
                    ready.append(child)
