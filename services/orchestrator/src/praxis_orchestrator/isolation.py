"""Each run's protocol runs on a worker thread with an event loop of its own.

Why: protocol code is arbitrary Python. A ``time.sleep(30)`` or a busy loop on the orchestrator's
event loop froze everything that keeps the process honest: the edge heartbeat, the lease keepers'
renewals (another run then lost its leases), control commands, the health endpoint. The loop that
talks to NATS (the *supervisor*) must stay free, so protocols never run on it.

Why threads and not child processes: a child process could be killed, which is stronger, but the
live PyLabRobot objects (the machines with their backends, the tip and volume trackers every run
on the workcell shares) would have to live in the child, or every instrument command be shipped
across a process boundary; one process per workcell owning them is the model today. PyLabRobot
0.2.2's liquid handler, plate reader and chatterbox backends create no loop-bound asyncio objects,
so they can be driven from another loop (see ``praxis_plr.live``). The price of a thread: it
cannot be killed. A run that will not stop is *abandoned* instead: its view of the workcell is
fenced (``WorkcellView.abandon``: every later instrument command is refused before the backend
sees it), its leases are handed to an operator, and it ends ``requires_intervention``. The thread
is a daemon: it lives on until its code returns, and cannot hold the process up at exit.

What crosses between the loops, and how:

* The protocol is started with ``asyncio.run_coroutine_threadsafe``; its end comes back through
  the concurrent future (the supervisor waits on it with ``asyncio.wrap_future``).
* Pause, resume and cancel: ``RunControl`` wakes the protocol's loop with ``call_soon_threadsafe``.
  The harder steps of a cancel (``Executor``) cancel the protocol's task on its own loop, the
  same way.
* Events (call records, pause/resume) go into the ``Outbox``, whose ``emit`` is thread-safe; other
  supervisor-side effects (the heartbeat's poke) are handed over with ``call_soon_threadsafe``.
* The fence: the lease keeper's local state, read by the guard before every instrument command.

A watchdog on the supervisor notices a worker whose loop has stopped turning (``RunThread`` beats
on its own loop every ``tick`` seconds): ``RunBlocked`` once per stall.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


SWITCH_INTERVAL = 0.001
"""Seconds a thread may hold the GIL while another waits for it (Python's default is 0.005)."""

YIELD_EVERY = 0.005
"""A worker running Python code gives the GIL away for a moment at least this often."""


def favour_the_supervisor() -> None:
    """Shorten the GIL switch interval (process-wide, once; never lengthen it)."""
    if sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)


def yielding_profile(every: float = YIELD_EVERY) -> Callable[[Any, str, Any], None]:
    """A profile function for a worker thread: every ``every`` seconds of its Python code, it
    sleeps 0.2 ms, handing the GIL to whoever waits for it (the supervisor).

    Why: a protocol that spins *and* makes short system calls (``while not path.exists():``,
    polling a port) starved the supervisor. Each system call releases the GIL and takes it
    straight back, which restarts the waiting thread's switch-interval clock, so the supervisor
    almost never got the GIL back: measured on this machine, its loop lagged 100 ms at the median
    and 3-7 s at worst (heartbeats and lease renewals timed out); with this profile 1-3 ms and
    under 12 ms. A pure spin without system calls is already handled by the switch interval.

    The price: a Python-level hook on each call and return of the worker's Python code
    (protocol and PyLabRobot), counted before the clock is read: about 0.2 us per call, several
    times slower for call-heavy pure-Python code; ``make bench`` gives the figure per instrument
    command. Instrument commands on real hardware take 100 ms and more."""
    last = time.perf_counter()
    calls = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal last, calls
        calls += 1
        if calls & 255:
            return
        now = time.perf_counter()
        if now - last > every:
            time.sleep(0.0002)
            last = time.perf_counter()

    return profile


class RunThread:
    """A daemon thread running an event loop of its own, for one run's protocol."""

    def __init__(self, name: str, tick: float = 0.25) -> None:
        self.name = name
        self.tick = tick
        self.loop = asyncio.new_event_loop()
        self.alive_at = time.monotonic()  # the worker loop's last beat
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        favour_the_supervisor()
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` as a task on the worker's loop."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, callback: Any, *args: Any) -> None:
        """Call ``callback(*args)`` on the worker's loop (nothing if it has stopped)."""
        with contextlib.suppress(RuntimeError):  # closed: the worker is gone
            self.loop.call_soon_threadsafe(callback, *args)

    def stalled_for(self) -> float:
        """Seconds since the worker's loop last turned (about ``tick`` when it is free)."""
        return time.monotonic() - self.alive_at

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the worker's loop once it is free: its leftover tasks are cancelled, the loop
        closed, the thread ends. Returns at once."""
        self.call(self.loop.stop)

    def join(self, timeout: float | None = None) -> bool:
        """Wait (blocking) for the thread to end; whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _beat(self) -> None:
        self.alive_at = time.monotonic()
        self.loop.call_later(self.tick, self._beat)

    def _main(self) -> None:
        sys.setprofile(yielding_profile())  # this thread only
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._beat)
        try:
            self.loop.run_forever()
            left = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
            for task in left:
                task.cancel()
            if left:
                self.loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        except Exception:
            log.exception("run worker %s did not shut down cleanly", self.name)
        finally:
            self.loop.close()
