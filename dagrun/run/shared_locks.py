"""Named locks shared by the runs of a fleet.

In one run, a lock's holders are counted by its :class:`~.scheduler.RunState`.
In a fleet, every run's scheduler takes and releases the same locks here
instead: ``scope: host`` locks (the default) per workspace host, ``scope:
fleet`` locks across the whole fleet. Taking all of a step's locks is one
atomic check; releasing wakes the other runs' drivers so a step blocked on
the lock is dispatched at once, not at their next event.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable, Mapping

from ..spec import Lock

LOCAL_HOST = ""  # workspaces that name no host share this machine


class SharedLocks:
    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[tuple[str, str], int] = {}
        self._wakers: list[Callable[[], None]] = []

    def view(self, host: str | None, capacity: Mapping[str, int], wake: Callable[[], None]) -> "LockView":
        """The locks as one run (of a workspace on ``host``) sees them."""
        with self._mutex:
            self._wakers.append(wake)
        return LockView(self, str(host or LOCAL_HOST), capacity, wake)

    def held(self) -> dict[tuple[str, str], int]:
        with self._mutex:
            return {k: v for k, v in self._held.items() if v}

    def _leave(self, wake: Callable[[], None]) -> None:
        with self._mutex:
            if wake in self._wakers:
                self._wakers.remove(wake)


class LockView:
    __slots__ = ("_shared", "_host", "_capacity", "_wake")

    def __init__(self, shared: SharedLocks, host: str, capacity: Mapping[str, int],
                 wake: Callable[[], None]) -> None:
        self._shared, self._host, self._capacity, self._wake = shared, host, capacity, wake

    def _key(self, lock: Lock) -> tuple[str, str]:
        return ("" if lock.scope == "fleet" else self._host, lock.name)

    def take(self, locks: Iterable[Lock]) -> bool:
        """Take every lock of a step, or none (False: one is at capacity)."""
        shared = self._shared
        keys = [(self._key(lock), self._capacity.get(lock.name, lock.capacity)) for lock in locks]
        with shared._mutex:  # noqa: SLF001 - one registry, its views
            held = shared._held  # noqa: SLF001
            if any(held.get(key, 0) >= capacity for key, capacity in keys):
                return False
            for key, _ in keys:
                held[key] = held.get(key, 0) + 1
        return True

    def release(self, locks: Iterable[Lock]) -> None:
        shared = self._shared
        with shared._mutex:  # noqa: SLF001
            held = shared._held  # noqa: SLF001
            for lock in locks:
                key = self._key(lock)
                held[key] -= 1
            others = [w for w in shared._wakers if w is not self._wake]  # noqa: SLF001
        for wake in others:  # a step of another run may be waiting for what was just released
            wake()

    def close(self) -> None:
        self._shared._leave(self._wake)  # noqa: SLF001
