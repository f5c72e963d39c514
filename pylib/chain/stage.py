"""The one stage shape: a thread that owns its sockets and moves each result on at once.

A :class:`Stage` is an event loop on its own thread, blocked in one ``zmq.Poller`` over its
inbox, watched sockets and a *wake pipe* (no timed poll); other threads hand it work with
:meth:`Stage.call_soon_threadsafe`, so every ZeroMQ socket belongs to the stage's thread."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import zmq
from prometheus_client import Counter

from pylib.chain.envelope import Envelope
from pylib.chain.settle import settle_failed
from pylib.chain.sockets import (
    MESSAGES_REJECTED,
    Parts,
    Sender,
    bind_pull,
    drain,
    inproc,
    unpack_or_reject,
)
from pylib.runtime.worker import START_TIMEOUT, RestartBudget, Worker

log = logging.getLogger(__name__)

T = TypeVar("T")
HandlerResult = Envelope | Iterable[Envelope] | None
Handler = Callable[[Envelope], HandlerResult]

MESSAGES_HANDLED = Counter("chain_messages_total", "Messages a stage handled", ["stage"])

# Messages taken from one socket per turn of the loop, so no source starves the others.
BATCH = 64


def failed(stage: str, envelope: Envelope, exc: Exception) -> None:
    """Log and count a message ``stage`` failed on (a traceback unless it is bad data)."""
    MESSAGES_REJECTED.labels(stage, type(exc).__name__).inc()
    log.error(
        "%s: failed on %s %s: %s: %s",
        stage,
        envelope.kind,
        envelope.id,
        type(exc).__name__,
        exc,
        exc_info=not isinstance(exc, ValueError | KeyError | TypeError),
    )


def _prestart(pool: ThreadPoolExecutor, count: int) -> threading.Barrier:
    """Have ``pool`` start all ``count`` threads now, not one by one in a first burst.
    Each task waits for all the others; abort the barrier returned to release them early."""
    barrier = threading.Barrier(count)

    def arrive() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(START_TIMEOUT)

    for _ in range(count):
        pool.submit(arrive)
    return barrier


class Timer:
    """A callback due on a stage's thread at a time; :meth:`cancel` drops it."""

    __slots__ = ("callback", "cancelled", "due")

    def __init__(self, due: float, callback: Callable[[], None]) -> None:
        self.due = due
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Stage(Worker):
    """One stage of the chain: inbox (bound PULL), outbox (PUSH to the next stage), a loop.
    Subclasses implement :meth:`on_message` (or :meth:`handle`, whose results are sent on);
    ``stop_weight`` is its relative share of ``SHUTDOWN_TIMEOUT`` (sets :attr:`stop_timeout`)."""

    stop_weight: ClassVar[float] = 1.0
    # Start every pool thread with the stage, not one by one as work first comes.
    prestart_pool: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        *,
        inbox: str | None = None,
        outbox: str | None = None,
        workers: int = 0,
        stop_timeout: float = 5.0,
        budget: RestartBudget | None = None,
        on_fatal: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        super().__init__(name, stop_event, budget=budget, on_fatal=on_fatal)
        self.inbox = inbox or inproc(name)
        self.outbox = outbox
        self.workers = workers
        self.stop_timeout = stop_timeout
        self._pull: zmq.Socket[bytes] | None = None
        self._sender: Sender | None = None
        self._watched: list[tuple[zmq.Socket[bytes], Callable[[Parts], None]]] = []
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake_lock = threading.Lock()
        self._wake_read: int | None = None
        self._wake_write: int | None = None
        self._wake_pending = False  # a byte is in the pipe that the loop has not read yet
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_seq = itertools.count()
        self._pool: ThreadPoolExecutor | None = None
        self._prestarted: threading.Barrier | None = None
        self._inbox_paused = False
        # Pool work not finished yet, of this and earlier attempts (a crash leaves it running).
        self._futures: set[Future[Any]] = set()
        # Relays the chain folded in: applied to what it sends, or (head) to what arrives.
        self.outlet: list[Relay] = []
        self.intake: list[Relay] = []

    def on_messages(self, envelopes: list[Envelope]) -> None:
        """Handle messages that arrived together (default: one by one, each settled if it fails)."""
        for envelope in envelopes:
            self.handle_one(envelope)

    def on_message(self, envelope: Envelope) -> None:
        """Handle one message from the inbox (on the stage's thread)."""
        self.send_all(self.handle(envelope))

    def handle(self, envelope: Envelope) -> HandlerResult:
        """Turn one message into what goes on (the default :meth:`on_message` sends it)."""
        raise NotImplementedError

    def finish(self, deadline: float) -> None:
        """At stop, after the inbox was drained: let pool work end until ``deadline``."""
        self.run_until(lambda: not self._futures, deadline)

    # --- for subclasses, on the stage's thread ---------------------------------------
    def pause_inbox(self, paused: bool = True) -> None:
        """Take nothing more from the inbox until resumed: upstream waits (back-pressure)."""
        self._inbox_paused = paused

    def send(self, envelope: Envelope) -> None:
        """Pass one envelope on, through the folded relays (waits while the next inbox is full)."""
        if self._sender is None:
            raise RuntimeError(f"{self.name} has no outbox")
        if not self.outlet:
            self._sender.send(envelope)
            return
        envelopes = [envelope]
        for relay in self.outlet:
            envelopes = relay.transform(envelopes, self)
        for item in envelopes:
            self._sender.send(item)

    def send_all(self, result: HandlerResult) -> None:
        """Pass on a handler's result: one envelope, several, or none."""
        if result is None:
            return
        for item in (result,) if isinstance(result, Envelope) else result:
            self.send(item)

    def watch(self, socket: zmq.Socket[bytes], handler: Callable[[Parts], None]) -> None:
        """Also read ``socket`` (made on this thread, in :meth:`on_thread_open`)."""
        self._watched.append((socket, handler))

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on this thread after ``delay`` seconds (unless cancelled)."""
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.due, next(self._timer_seq), timer))
        return timer

    def submit(
        self, fn: Callable[..., T], *args: Any, then: Callable[[Future[T]], None] | None = None
    ) -> Future[T]:
        """Run ``fn(*args)`` on the pool; ``then(future)`` runs on this thread once it ends.
        Without ``then``, what ``fn`` returns (envelopes, or None) is sent on."""
        if self._pool is None:
            raise RuntimeError(f"{self.name} has no pool")
        future = self._pool.submit(fn, *args)
        self._futures.add(future)

        def done(finished: Future[T]) -> None:
            self._futures.discard(finished)
            if then is not None:
                then(finished)
                return
            error = finished.exception() if not finished.cancelled() else None
            if error is not None:
                MESSAGES_REJECTED.labels(self.name, type(error).__name__).inc()
                log.error("%s: pool work failed: %s", self.name, error, exc_info=error)
            elif not finished.cancelled():
                self.send_all(finished.result())  # type: ignore[arg-type]

        future.add_done_callback(lambda finished: self.call_soon_threadsafe(lambda: done(finished)))
        return future

    @property
    def pending_work(self) -> int:
        return len(self._futures)

    def run_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Run queued calls as they come until ``condition()`` holds or ``deadline``."""
        self._run_calls()
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._wait_for_wake(remaining)
            self._run_calls()
        return True

    # --- from any thread -------------------------------------------------------------
    def emit(self, envelope: Envelope) -> None:
        """Send ``envelope`` on from the stage's thread, as soon as it can (any thread)."""
        self.call_soon_threadsafe(lambda: self.send(envelope))

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the stage's thread as soon as it can."""
        self._calls.put(callback)
        self._wake()

    def stop(self) -> None:
        """Ask the stage to finish and end; wakes its loop at once."""
        super().stop()
        self._wake()

    def on_thread_open(self) -> None:
        # Sockets live as long as the thread: a restart must not rebind the inbox.
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        with self._wake_lock:
            self._wake_read, self._wake_write = read, write
        self._pull = bind_pull(self.inbox)
        if self.outbox is not None:
            self._sender = Sender(self.outbox)

    def on_thread_start(self) -> None:
        self._timers.clear()  # an attempt sets its own; a crashed one's are void
        if self.workers:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=f"{self.name}-pool")
            if self.prestart_pool:
                self._prestarted = _prestart(self._pool, self.workers)

    def on_thread_stop(self) -> None:
        if self._prestarted is not None:
            self._prestarted.abort()
            self._prestarted = None
        # After a crash, pool work under way goes on; the next attempt takes its results.
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=not self.should_keep_running())
            self._pool = None

    def on_thread_close(self) -> None:
        self._run_calls()  # results that came in last still go on
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        for socket, _ in self._watched:
            socket.close(linger=0)
        self._watched.clear()
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None
        with self._wake_lock:
            fds, self._wake_read, self._wake_write = (self._wake_read, self._wake_write), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def work(self) -> None:
        pull, wake = self._pull, self._wake_read
        assert pull is not None
        assert wake is not None
        poller = zmq.Poller()
        poller.register(wake, zmq.POLLIN)
        for socket, _ in self._watched:
            poller.register(socket, zmq.POLLIN)
        polling_inbox = False
        while self.should_keep_running():
            if polling_inbox == self._inbox_paused:
                polling_inbox = not self._inbox_paused
                if polling_inbox:
                    poller.register(pull, zmq.POLLIN)
                else:
                    poller.unregister(pull)
            ready = dict(poller.poll(self._poll_timeout()))
            if wake in ready:
                self._read_wake()
            self._run_calls()
            for socket, handler in self._watched:
                if socket in ready:
                    for data in drain(socket, BATCH):
                        self._safely(handler, data)
            if pull in ready and not self._inbox_paused:
                self._receive(list(drain(pull, BATCH)))
            self._run_timers()
        self._stopping(pull)

    def _stopping(self, pull: zmq.Socket[bytes]) -> None:
        deadline = time.monotonic() + self.stop_timeout
        self._run_calls()
        # What upstream handed over before the stop is handled, never dropped.
        self._receive(list(drain(pull)))
        self.finish(deadline)
        self._run_calls()

    def _receive(self, batch: list[Parts]) -> None:
        envelopes = [e for e in (unpack_or_reject(data, self.name) for data in batch) if e]
        for relay in self.intake:
            envelopes = relay.transform(envelopes, self)
        if envelopes:
            self.on_messages(envelopes)

    def handle_one(self, envelope: Envelope) -> None:
        """:meth:`on_message`, with a failure logged, counted and settled."""
        try:
            self.on_message(envelope)
        except Exception as exc:
            self.reject(envelope, exc)
            return
        MESSAGES_HANDLED.labels(self.name).inc()

    def reject(self, envelope: Envelope, exc: Exception) -> None:
        """A message this stage failed on: logged, counted, and settled by a done mark."""
        failed(self.name, envelope, exc)
        done = settle_failed(envelope)
        if done is not None and self._sender is not None:
            self.send(done)

    def _poll_timeout(self) -> int | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0, int((self._timers[0][0] - time.monotonic()) * 1000) + 1)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._safely(timer.callback)

    def _run_calls(self) -> None:
        while True:
            try:
                callback = self._calls.get_nowait()
            except queue.Empty:
                return
            self._safely(callback)

    def _safely(self, callback: Callable[..., None], *args: Any) -> None:
        # A bug in one callback costs that callback, never the loop and what waits in it.
        try:
            callback(*args)
        except Exception as exc:
            MESSAGES_REJECTED.labels(self.name, type(exc).__name__).inc()
            log.exception("%s: a callback failed: %s", self.name, exc)

    def _wake(self) -> None:
        with self._wake_lock:
            # One byte per turn of the loop is enough: it runs every call queued before it.
            if self._wake_write is None or self._wake_pending:
                return
            self._wake_pending = True
            # A full pipe holds wake-ups already: the loop will wake.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_write, b"\0")

    def _read_wake(self) -> None:
        if self._wake_read is None:
            return
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        with self._wake_lock:
            # After emptying the pipe, before the calls run: a later call writes a byte again.
            self._wake_pending = False

    def _wait_for_wake(self, timeout: float) -> None:
        if self._wake_read is None:
            time.sleep(min(timeout, 0.05))
            return
        poller = zmq.Poller()
        poller.register(self._wake_read, zmq.POLLIN)
        if poller.poll(int(timeout * 1000) + 1):
            self._read_wake()


class Relay(Stage):
    """A stage whose work is one function, run inline: message in, message(s) out.
    With ``fold`` (quick, stateless), the chain runs it on the thread(s) of the stage before
    it (:attr:`Stage.outlet`), sparing each message a hand-off; upstream because every message
    waits for the last stage. After a tier it must be safe to call at once; at the head it
    folds into the stage after it (:attr:`Stage.intake`); alone it stays a stage."""

    def __init__(
        self,
        name: str,
        stop_event: threading.Event,
        handler: Handler,
        *,
        fold: bool = False,
        **kwargs: Any,
    ):
        super().__init__(name, stop_event, **kwargs)
        self.handler = handler
        self.foldable = fold

    def handle(self, envelope: Envelope) -> HandlerResult:
        return self.handler(envelope)

    def transform(self, envelopes: list[Envelope], host: Stage) -> list[Envelope]:
        """The handler applied on ``host``'s thread; a message it fails on becomes a done mark."""
        out: list[Envelope] = []
        for envelope in envelopes:
            try:
                result = self.handler(envelope)
            except Exception as exc:
                failed(self.name, envelope, exc)
                done = settle_failed(envelope)
                if done is not None:
                    out.append(done)
                continue
            MESSAGES_HANDLED.labels(self.name).inc()
            if isinstance(result, Envelope):
                out.append(result)
            elif result is not None:
                out.extend(result)
        return out
