"""The engine's own thread: commands in between steps, each step's tokens out in one batch.

The HTTP side never touches the engine: it puts commands on a queue (:meth:`EngineLoop.submit`,
:meth:`EngineLoop.abort`, :meth:`EngineLoop.call`) and reads what comes back on its asyncio loop.
The engine thread takes every queued command before each step (blocking on the queue only when
there is no work), steps, and gives the step's events to the asyncio loop with one
``call_soon_threadsafe`` (one wake-up per step, whatever the number of streams). A request whose
stream is gone is aborted by command; its pages and adapter slot are free before the next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jlora.engine import Engine
from jlora.sampling_params import SamplingParams
from jlora.scheduler.request import RequestOutput, StreamEvent

# While the scheduler can run nothing (every waiting request's adapter is held back), the loop
# waits this long for a command before it asks again, rather than spinning.
IDLE_POLL_S = 0.002


@dataclass(eq=False)
class RequestStream:
    """One request as the HTTP side sees it. On ``queue`` arrive, in order: its rid once the engine
    took it (or the exception it was refused with, and nothing else); then lists of its
    :class:`StreamEvent`, the last one ``finished``; or, if it was aborted, its
    :class:`RequestOutput`."""

    prompt_ids: list[int]
    params: SamplingParams
    lora_name: str | None
    arrival: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    rid: int | None = None
    """Set on the engine thread when the engine takes it."""
    output: RequestOutput | None = None
    """Set on the engine thread when it finishes (with the last event)."""


class ServerError(RuntimeError):
    """The engine could not be started (the message says why); every request gets 503."""


class EngineLoop:
    """Builds and runs an engine on a thread of its own (see the module docstring)."""

    def __init__(
        self,
        make_engine: Callable[[], Engine],
        *,
        on_finish: Callable[[RequestOutput], None] | None = None,
        on_step: Callable[[Engine, float | None], None] | None = None,
        max_gaps: int = 1_000_000,
    ):
        self._make_engine = make_engine
        self._on_finish = on_finish
        self._on_step = on_step
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._streams: dict[int, RequestStream] = {}
        self._aio: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.engine: Engine | None = None
        self.ready = threading.Event()
        """Set once the engine is built and warmed up (or failed: then ``error`` says why)."""
        self.error: str | None = None
        self.step_gaps: deque[float] = deque(maxlen=max_gaps)
        """Seconds between the end of one step and the start of the next while there was work:
        the engine's time not stepping (commands, events, waiting for the GIL)."""
        self.num_steps = 0

    # ------------------------------------------------------------------ lifecycle
    def start(self, aio_loop: asyncio.AbstractEventLoop) -> None:
        """Start the engine thread; its events are delivered on ``aio_loop``."""
        self._aio = aio_loop
        self._thread = threading.Thread(target=self._run, name="jlora-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping = True
        self._commands.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the HTTP side's calls
    def submit(
        self,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        lora_name: str | None,
        arrival: float,
    ) -> RequestStream:
        """Queue a request (checked by the engine on its thread; a refusal arrives on the
        stream's queue as the ``ValueError``)."""
        stream = RequestStream(list(prompt_ids), params, lora_name, arrival)
        self._commands.put(("add", stream))
        return stream

    def abort(self, stream: RequestStream) -> None:
        """End the stream's request if it has not finished (its client went away)."""
        self._commands.put(("abort", stream))

    def call(self, fn: Callable[[Engine], object]) -> concurrent.futures.Future:
        """Run ``fn(engine)`` on the engine thread between steps; its result or exception comes
        back through the future (adapter loads, reading the engine's state)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("call", fn, future))
        return future

    # ------------------------------------------------------------------ the engine thread
    def _run(self) -> None:
        try:
            self.engine = self._make_engine()
        except Exception as e:  # noqa: BLE001 - reported to every client as 503, with why
            self.error = f"the engine did not start: {type(e).__name__}: {e}"
            self.ready.set()
            self._refuse_all()
            return
        self.ready.set()
        engine = self.engine
        deliveries: list[tuple[RequestStream, object]] = []
        last_end: float | None = None
        while not self._stopping:
            idle = not engine.has_unfinished()
            if idle:
                last_end = None  # the time it waits for work is no gap between steps
            self._take_commands(deliveries, block=idle)
            if self._stopping:
                break
            if not engine.has_unfinished():
                self._flush(deliveries)
                continue
            start = time.perf_counter()
            gap = None if last_end is None else start - last_end
            if gap is not None:
                self.step_gaps.append(gap)
            engine.step()  # failures inside a step end their requests with an error, not here
            last_end = time.perf_counter()
            self.num_steps += 1
            plan = engine.last_plan
            self._collect(deliveries)
            self._flush(deliveries)
            if self._on_step is not None:
                self._on_step(engine, gap)
            if plan.kind == "idle":
                last_end = None
                self._take_commands(deliveries, block=True, timeout=IDLE_POLL_S)

    def _take_commands(self, deliveries, block: bool, timeout: float | None = None) -> None:
        engine = self.engine
        try:
            command = self._commands.get(block=block, timeout=timeout)
        except queue.Empty:
            return
        while command is not None:
            kind = command[0]
            if kind == "add":
                stream = command[1]
                try:
                    rid = engine.add_request(
                        stream.prompt_ids, stream.params, stream.lora_name, stream.arrival
                    )
                except ValueError as e:
                    deliveries.append((stream, e))
                else:
                    stream.rid = rid
                    engine.watch(rid)
                    self._streams[rid] = stream
                    deliveries.append((stream, rid))  # accepted: the HTTP side may answer 200
            elif kind == "abort":
                stream = command[1]
                if stream.rid is not None and stream.rid in self._streams:
                    engine.abort(stream.rid)
                    self._finish(stream, deliveries, engine.pop_events(stream.rid))
            else:
                _, fn, future = command
                try:
                    future.set_result(fn(engine))
                except Exception as e:  # noqa: BLE001 - the caller gets it
                    future.set_exception(e)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
        self._stopping = True  # None: stop()

    def _collect(self, deliveries) -> None:
        engine = self.engine
        finished = []
        for rid, stream in self._streams.items():
            events = engine.pop_events(rid)
            if not events:
                continue
            if events[-1].finished is not None:
                finished.append((stream, events))
            else:
                deliveries.append((stream, events))
        for stream, events in finished:
            self._finish(stream, deliveries, events)

    def _finish(self, stream: RequestStream, deliveries, events: list[StreamEvent]) -> None:
        engine = self.engine
        rid = stream.rid
        output = RequestOutput.of(engine.requests[rid])
        stream.output = output
        del self._streams[rid]
        engine.release(rid)  # the server runs for good: the engine keeps no finished request
        if events:
            deliveries.append((stream, events))
        if output.finish_reason == "abort" or not events or events[-1].finished is None:
            deliveries.append((stream, output))  # no final event carries it (an abort)
        if self._on_finish is not None:
            self._on_finish(output)

    def _flush(self, deliveries: list) -> None:
        if deliveries:
            batch = deliveries[:]
            deliveries.clear()
            self._aio.call_soon_threadsafe(_deliver, batch)

    def _refuse_all(self) -> None:
        """After a failed start: answer every queued and later command with the error."""
        while True:
            command = self._commands.get()
            if command is None:
                return
            if command[0] == "add":
                self._aio.call_soon_threadsafe(_deliver, [(command[1], ServerError(self.error))])
            elif command[0] == "call":
                command[2].set_exception(ServerError(self.error))


def _deliver(batch: list[tuple[RequestStream, object]]) -> None:
    """On the asyncio loop: put each item on its stream's queue (a list of events is put as is)."""
    for stream, item in batch:
        stream.queue.put_nowait(item)
