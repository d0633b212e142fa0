"""CPU thread settings that stay fast when another program holds a core (issue 12 item 9).

torch's CPU kernels (ATen, oneDNN, MKL) run on one OpenMP pool, GNU libgomp in the CPU wheels, with
one thread per core. Between two parallel regions libgomp's threads spin for a while (300,000 spins
by default) waiting for the next one. On a quiet machine that saves a wake-up; when another process
holds a core, a spinning thread burns the time slice its partner needs to finish the region, and
every barrier waits for a thread that is not running: a 2-core demo took 2.9x as long next to one
busy process as on a quiet machine, slower than 1 thread.

So genlab looks, at start, at how many cores other programs keep busy (two readings of /proc/stat
50 ms apart) and, for each setting the user has not made:

- some core busy: one thread per core left (`OMP_NUM_THREADS`, at least one), and waiting threads
  sleep at once (`OMP_WAIT_POLICY=PASSIVE`, libgomp's spin count 0);
- all quiet: every core, and a short spin (`GOMP_SPINCOUNT=10000`) before a waiting thread sleeps.
  Passive waiting cost a quiet 2-core demo 30-70% (each region pays a wake-up); 10,000 spins kept
  the speed of spinning there, and give a core back sooner than the default 300,000 when another
  program starts later (a reading at start does not see that program).

libgomp reads these variables once, when torch loads it, so `configure_threads` must run before the
first `import torch`: the CLI entry point calls it first thing. A setting the user made is never
changed. The thread count changes the float results of training (a parallel sum adds in another
order), so a run records it and says when genlab chose it, and `--resume` goes on with the run's
own count unless the user set one.
Figures: benchmarks/README.md, "Threads on a busy CPU" (`benchmarks/threads.py`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, MutableMapping

# variables that already say how OpenMP threads wait: the user's choice wins
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
BUSY_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}  # another program holds a core: sleep at once
QUIET_WAIT = {"GOMP_SPINCOUNT": "10000"}  # nothing else running: spin a little, then sleep
# what configure_threads set in this process: `runs` tells a thread count genlab chose (which
# changes float results) from one the user set, and reuses a run's own count on resume
CHOSEN: dict[str, str] = {}


def configure_threads(environ: MutableMapping[str, str] | None = None,
                      busy: Callable[[], float | None] | None = None) -> dict[str, str]:
    """Set genlab's OpenMP defaults in `environ` (default `os.environ`) and return what was set.

    `busy` (cores that other programs keep busy now; default `busy_cores`) decides: at least half
    a core busy sets `OMP_NUM_THREADS` to the cores left and the passive wait policy; less sets
    the short spin (`QUIET_WAIT`) and leaves the thread count to torch. Each only where the user set
    nothing of its kind (`OMP_NUM_THREADS`; any of `WAIT_VARIABLES`). Sets nothing when torch is
    already imported (libgomp has read its settings; the call would look effective and not be).
    """
    env = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return {}
    set_wait = not any(name in env for name in WAIT_VARIABLES)
    set_threads = "OMP_NUM_THREADS" not in env
    if not (set_wait or set_threads):
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    taken = (busy or busy_cores)()
    busy_now = cores > 1 and taken is not None and taken >= 0.5
    chosen: dict[str, str] = {}
    if set_wait:
        chosen.update(BUSY_WAIT if busy_now else QUIET_WAIT)
    if set_threads and busy_now:
        chosen["OMP_NUM_THREADS"] = str(max(1, cores - round(taken)))
    env.update(chosen)
    if environ is None:
        CHOSEN.update(chosen)
    return chosen


def user_set_threads() -> bool:
    """Whether OMP_NUM_THREADS is the user's own setting (not one genlab chose)."""
    return "OMP_NUM_THREADS" in os.environ and "OMP_NUM_THREADS" not in CHOSEN


def busy_cores(interval: float = 0.05, stat: str = "/proc/stat") -> float | None:
    """Cores kept busy by all programs over `interval` seconds (this one sleeps meanwhile), from
    the kernel's CPU counters; None where there are none (not Linux)."""
    def reading() -> tuple[int, int] | None:
        try:
            with open(stat, encoding="ascii") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        if len(fields) < 5:
            return None
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])  # busy, total (guest time is in user)

    first = reading()
    time.sleep(interval)
    second = reading()
    if first is None or second is None or second[1] <= first[1]:
        return None
    cores = os.cpu_count() or 1
    return cores * (second[0] - first[0]) / (second[1] - first[1])
