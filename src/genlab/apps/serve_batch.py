"""The work queue of one served model: micro-batches of image requests, text generated token by
token, backpressure, deadlines and clients that go away.

Every model has one worker thread; all its forward passes run there, so two requests never share
the model's tensors at once and the event loop stays free to accept and refuse requests.

- Image requests (`submit_call`) wait in a bounded queue. When the worker is free it takes the
  oldest one, waits a little for others while they keep arriving (`_gather`), and makes every
  call it took with one `model.sample_many`: one set of forward passes for all of them, each call
  with its own generator. `model.sample_pass_rows` fixes
  the size of every pass, so a request's bytes do not depend on the requests beside it.
- Other jobs (`submit_fn`, e.g. a whole audio request) run alone, in the same queue.
- Text (`TextStream`) is queued, not batched: each request steps its own generator one token at a
  time on the worker thread, so concurrent streams take turns token by token, and a stream whose
  client went away stops before its next token.
- A full queue answers at once (`Overloaded`, an HTTP 429 with Retry-After), never by hanging; a
  request whose deadline passes before its work starts is dropped (`DeadlineExceeded`, a 504).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from genlab.models.base import GenerativeModel, SampleCall

QUIET_S = 0.001  # a gathering batch starts once no request arrived for this long


class Overloaded(Exception):
    """The queue is full; try again in `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry in {retry_after} s")
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """The request's deadline passed before its answer was ready."""


class ClientGone(Exception):
    """The client disconnected; its work was dropped."""


@dataclass
class Job:
    call: SampleCall | None  # an image call, batched with others
    fn: Callable[[], Any] | None  # or a job that runs alone
    future: asyncio.Future
    images: int = 0  # rows it adds to a pass
    dropped: bool = False  # its client left or its deadline passed before it started
    # what the worker does with the call's samples before answering (encoding them as PNGs
    # there saves the request a trip through another thread)
    finish: Callable[[Any], Any] | None = None


@dataclass
class QueueStats:
    passes: int = 0  # sample_many calls made
    calls_per_pass: deque = field(default_factory=lambda: deque(maxlen=1000))
    dropped: int = 0
    refused: int = 0


class ModelQueue:
    def __init__(self, model: GenerativeModel, *, batching: bool = True, window_s: float = 0.01,
                 max_images: int = 64, max_waiting: int = 64) -> None:
        self.model = model
        self.batching, self.window_s = batching, window_s
        self.max_images, self.max_waiting = max_images, max_waiting
        self.threads = torch.get_num_threads()  # the worker uses what the server started with
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="genlab-model")
        self.stats = QueueStats()
        self._jobs: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._pass_seconds = 0.05  # running estimate, for Retry-After
        self._task: asyncio.Task | None = None
        self.streams = 0  # text streams open now
        self._arrivals = 0  # jobs ever submitted (the gathering watches it)

    # --- the event loop side ---------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for job in self._jobs:
            if not job.future.done():
                job.future.cancel()
        self.executor.shutdown(wait=True)

    def submit_call(self, call: SampleCall, finish: Callable[[Any], Any] | None = None) -> Job:
        """Queue an image call; its result is `finish(samples)` (or the samples)."""
        return self._submit(Job(call, None, asyncio.get_running_loop().create_future(), call.n,
                                finish=finish))

    def submit_fn(self, fn: Callable[[], Any]) -> Job:
        return self._submit(Job(None, fn, asyncio.get_running_loop().create_future()))

    def _submit(self, job: Job) -> Job:
        waiting = sum(not j.dropped for j in self._jobs)
        if waiting >= self.max_waiting:
            self.stats.refused += 1
            raise Overloaded(self.retry_after())
        self._jobs.append(job)
        self._arrivals += 1
        self._wake.set()
        return job

    def retry_after(self) -> int:
        """Seconds until the queue has room again, by the recent time per pass."""
        images = sum(j.images or self.max_images for j in self._jobs if not j.dropped)
        passes = math.ceil(images / self.max_images) if self.batching else len(self._jobs)
        return max(1, math.ceil(passes * self._pass_seconds))

    async def result(self, job: Job, deadline: float, gone: asyncio.Event) -> Any:
        """The job's result; `DeadlineExceeded` past `deadline` (time.monotonic), `ClientGone` once
        `gone` is set. Either way a job that has not started is dropped."""
        gone_wait = asyncio.ensure_future(gone.wait())
        try:
            done, _ = await asyncio.wait({job.future, gone_wait},
                                         timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone_wait.cancel()
        if job.future in done:
            return job.future.result()
        job.dropped = True
        self.stats.dropped += 1
        raise ClientGone() if gone.is_set() else DeadlineExceeded()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._live():
                if self.batching and self._live()[0].call is not None:
                    await self._gather(loop)
                jobs = self._take()
                if not jobs:
                    continue
                t0 = time.perf_counter()
                try:
                    results = await loop.run_in_executor(self.executor, self._work, jobs)
                except Exception as e:  # a bug or a user error of one job: its answer, not ours
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(e)
                else:
                    for job, out in zip(jobs, results):
                        if not job.future.done():
                            job.future.set_result(out)
                self._pass_seconds = 0.8 * self._pass_seconds + 0.2 * (time.perf_counter() - t0)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait for batch-mates while they keep coming: until the queue fills a pass (passes are
        padded to `sample_pass_rows`, so a fuller one is nearly free), no request arrived for
        `QUIET_S`, or `window_s` is over. A lone request waits `QUIET_S`; under load, clients
        that were just answered get back into the next pass instead of the one after."""
        end = loop.time() + self.window_s
        rows = self.model.sample_pass_rows
        while loop.time() < end:
            queued, arrived = self._queued_images(), self._arrivals
            if queued >= self.max_images or queued % rows == 0:
                return
            await asyncio.sleep(QUIET_S)
            if self._arrivals == arrived:
                return

    def _live(self) -> list[Job]:
        while self._jobs and (self._jobs[0].dropped or self._jobs[0].future.done()):
            self._jobs.popleft()
        return list(self._jobs)

    def _queued_images(self) -> int:
        return sum(j.images for j in self._jobs if not j.dropped and j.call is not None)

    def _take(self) -> list[Job]:
        """The oldest live job, and with batching the next image calls that fit in `max_images`."""
        live = self._live()
        first = live[0]
        taken = [first]
        if first.call is not None and self.batching:
            images = first.images
            for job in live[1:]:
                if job.call is not None and images + job.images <= self.max_images:
                    taken.append(job)
                    images += job.images
        for job in taken:
            self._jobs.remove(job)
        return taken

    # --- the worker thread -----------------------------------------------------------------------

    def _work(self, jobs: list[Job]) -> list[Any]:
        torch.set_num_threads(self.threads)
        if jobs[0].fn is not None:
            return [jobs[0].fn()]
        self.stats.passes += 1
        self.stats.calls_per_pass.append(len(jobs))
        samples = self.model.sample_many([job.call for job in jobs])
        return [job.finish(out) if job.finish else out for job, out in zip(jobs, samples)]

    # --- text ----------------------------------------------------------------------------------

    def stream(self, pieces: Iterator[str], max_streams: int) -> TextStream:
        """A text stream over `pieces` (the modality's generator), stepped on the worker thread."""
        if self.streams >= max_streams:
            self.stats.refused += 1
            raise Overloaded(max(1, math.ceil(self._pass_seconds * 10)))
        return TextStream(self, pieces)


_END = object()


class TextStream:
    """One text request: its pieces, one `step()` (one token) at a time on the model's worker."""

    def __init__(self, queue: ModelQueue, pieces: Iterator[str]) -> None:
        self.queue, self.pieces = queue, pieces
        self.steps = 0  # pieces made
        self.steps_when_gone: int | None = None  # pieces made when the client was seen gone
        self.closed = False
        self._watcher: asyncio.Future | None = None
        queue.streams += 1

    def watch(self, gone: asyncio.Event) -> None:
        """Note how many pieces were made when the client was seen gone (the tests check that
        at most one more is made after it)."""
        async def note() -> None:
            await gone.wait()
            self.steps_when_gone = self.steps
        self._watcher = asyncio.ensure_future(note())

    async def step(self) -> str | None:
        """The next piece of text, or None at the end."""
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        piece = await loop.run_in_executor(self.queue.executor, next, self.pieces, _END)
        self.queue._pass_seconds = 0.9 * self.queue._pass_seconds + 0.1 * (
            time.perf_counter() - t0)
        if piece is _END:
            return None
        self.steps += 1
        return piece

    def close(self) -> None:
        """Free the slot and drop the generator, after any step still on the worker."""
        if not self.closed:
            self.closed = True
            if self._watcher is not None:
                self._watcher.cancel()
            self.queue.streams -= 1
            self.queue.executor.submit(self.pieces.close)
