"""One lock for the daemon's in-memory state, when the store's calls wait on a network.

On a local store every handler runs on the trio loop: its store calls take
microseconds. On an object store a lookup may wait for a LIST or an index GET;
run on the loop, that wait would stop every other request. So there handlers
run their tree code in worker threads, and the state they share with the loop
(the tree's caches, the inode table, the write buffer) is guarded as a GIL
guards Python's: the loop holds the lock during each of its task steps
(``HoldDuringTaskSteps``), a worker holds it while it runs tree code
(``TreeLock.run``), and the store lets it go while it waits on the network
(``TreeLock.released``, which ObjectStore calls around each request). Code keeps
its single-threaded shape: between two store calls nothing else runs, as
between two awaits on the loop.
"""

from __future__ import annotations

import contextlib
import threading

import trio


class TreeLock:
    def __init__(self):
        self._lock = threading.Lock()
        self._holder = threading.local()

    def acquire(self) -> None:
        self._lock.acquire()
        self._holder.held = True

    def release(self) -> None:
        self._holder.held = False
        self._lock.release()

    def run(self, call, *args):
        """``call(*args)`` holding the lock (in a worker thread)."""
        self.acquire()
        try:
            return call(*args)
        finally:
            self.release()

    @contextlib.contextmanager
    def released(self):
        """Around a wait on the network: others use the state meanwhile. A thread that
        does not hold the lock (a repack, a prefetch) has nothing to let go."""
        if not getattr(self._holder, "held", False):
            yield
            return
        self.release()
        try:
            yield
        finally:
            self.acquire()


class HoldDuringTaskSteps(trio.abc.Instrument):
    """The trio loop holds the lock while any of its tasks runs."""

    def __init__(self, lock: TreeLock):
        self.lock = lock

    def before_task_step(self, task) -> None:
        self.lock.acquire()

    def after_task_step(self, task) -> None:
        self.lock.release()
