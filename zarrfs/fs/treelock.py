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

A thread hop costs more than a lookup whose answers are all cached (a listing
seen a moment ago, an index read before), so ``call`` tries the tree code on the
loop first, and only when it reaches a wait on the network (``released`` raises
WouldWait there) runs it again in a worker thread. Tree code that may be tried
so changes nothing but caches before its first store request.

A store request made on the loop outside ``call`` (it would stop every other
request while it waits) is logged as a warning, once per place it comes from.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import traceback

import trio

log = logging.getLogger("zarrfs")


class WouldWait(BaseException):
    """A call tried on the loop (``TreeLock.call``) reached a wait on the network: it is run
    again in a worker thread. Not an Exception, so that no ``except Exception`` or
    ``except OSError`` of tree code takes it for a failure of the store."""


class TreeLock:
    def __init__(self):
        self._lock = threading.Lock()
        self._holder = threading.local()
        self.loop_thread: int | None = None  # set by HoldDuringTaskSteps
        self.waits_on_loop = 0  # store requests made on the loop outside ``call`` (logged)
        self._logged: set[str] = set()

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
        if getattr(self._holder, "trying", False):
            raise WouldWait
        if threading.get_ident() == self.loop_thread:
            self._on_loop()
        self.release()
        try:
            yield
        finally:
            self.acquire()


    async def call(self, call, *args, limiter: trio.CapacityLimiter | None = None):
        """``call(*args)`` from the loop: right there when it needs no network, else in a
        worker thread holding the lock (at most ``limiter``'s many at once)."""
        self._holder.trying = True
        try:
            return call(*args)
        except WouldWait:
            pass
        finally:
            self._holder.trying = False
        return await trio.to_thread.run_sync(self.run, call, *args, limiter=limiter)

    def _on_loop(self) -> None:
        self.waits_on_loop += 1
        where = "".join(traceback.format_stack(limit=12)[:-3])
        if where not in self._logged and len(self._logged) < 100:
            self._logged.add(where)
            log.warning("a store request on the event loop (every other request waits for it):\n%s", where)


class HoldDuringTaskSteps(trio.abc.Instrument):
    """The trio loop holds the lock while any of its tasks runs."""

    def __init__(self, lock: TreeLock):
        self.lock = lock

    def before_task_step(self, task) -> None:
        self.lock.acquire()
        self.lock.loop_thread = threading.get_ident()

    def after_task_step(self, task) -> None:
        self.lock.release()
