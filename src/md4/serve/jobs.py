"""Sampling jobs of ``md4 serve``: the limits one request may ask for, the slots that bound how many jobs run at
once, and a job: a worker thread whose events (dicts) reach the page as Server-Sent Events, cancelled when the
page goes away.

The work runs in a thread of its own so the server keeps answering (a second tab is told it is busy at once); the
work calls ``emit`` after each reverse step, which raises :class:`Cancelled` once the job is cancelled, so a
closed tab stops its job at the next step and frees its slot."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from typing import Any

Event = dict[str, Any]
Emit = Callable[[Event], None]
Work = Callable[[Emit], Event]  # emits the steps, returns the last event (the samples)
END = None  # the queue's last item: the worker has finished


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that one browser tab cannot exhaust the machine."""

    length: int = 1024  # tokens of a text sample (a prompt's or template's included)
    steps: int = 1000  # reverse steps (network calls of the confident sampler)
    samples: int = 40  # text samples, or images, in one job
    request_bytes: int = 1_000_000  # a request's body, an uploaded PNG included
    jobs: int = 1  # jobs running at once, over every client

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if int(value) != value or value < 1:
                raise ValueError(f"The limit --max-{name.replace('_', '-')} must be a positive integer, got {value}.")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Busy(Exception):
    """Every job slot is taken."""


class Cancelled(Exception):
    """The job was cancelled (its client went away); raised in the worker at its next step."""


class Job:
    """One sampling job: ``work`` runs in a worker thread and its events queue up for :meth:`events`."""

    def __init__(self, work: Work, release: Callable[[], None], loop: asyncio.AbstractEventLoop):
        self._work, self._release, self._loop = work, release, loop
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="md4-serve-job", daemon=True)

    def start(self) -> Job:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop the work at its next step (a finished job stays as it is)."""
        self._cancelled.set()

    def emit(self, event: Event) -> None:
        """Queue ``event`` for the client; raise :class:`Cancelled` if the job was cancelled."""
        if self._cancelled.is_set():
            raise Cancelled
        self._put(event)

    def _put(self, item: Event | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the server's loop has closed: nobody is listening
            self._cancelled.set()

    def _run(self) -> None:
        try:
            self._put(self._work(self.emit))
        except Cancelled:
            pass
        except ValueError as err:  # md4's own errors are one sentence for the user
            self._put({"type": "error", "message": str(err)})
        except Exception as err:  # noqa: BLE001 (a bug: tell the page, keep the trace in the server's log)
            traceback.print_exc(file=sys.stderr)
            self._put({"type": "error", "message": f"The job failed ({type(err).__name__}); see the server's log."})
        finally:
            self.finished.set()
            self._release()
            self._put(END)

    async def events(self) -> AsyncIterator[bytes]:
        """The job's events as Server-Sent Events (``data: JSON``), until the worker finishes; a consumer that
        stops early (the client went away) cancels the job."""
        try:
            while (event := await self._queue.get()) is not END:
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode()
        finally:
            self.cancel()


class JobSlots:
    """At most ``count`` jobs at once; :meth:`start` refuses another with :class:`Busy` rather than queueing it."""

    def __init__(self, count: int):
        self.count = count
        self._free = threading.BoundedSemaphore(count)

    def start(self, work: Work) -> Job:
        """Start ``work`` in a new job, on the running event loop, or raise :class:`Busy`."""
        if not self._free.acquire(blocking=False):
            raise Busy(
                f"The server is busy with {'another job' if self.count == 1 else f'{self.count} jobs'} "
                f"(at most {self.count} at a time); try again when it has finished."
            )
        try:
            return Job(work, self._free.release, asyncio.get_running_loop()).start()
        except BaseException:
            self._free.release()
            raise
