"""CPU thread settings that stay fast when another program holds a core (issue 12 item 9).

torch's CPU kernels (ATen, oneDNN, MKL) run on one OpenMP pool, GNU libgomp in the CPU wheels, with
one thread per core. Between two parallel regions libgomp's threads spin for a while (300,000 spins
by default) waiting for the next one. On a quiet machine that saves a wake-up; when another process
holds a core, a spinning thread burns the time slice its partner needs to finish the region, and
every barrier waits for a thread that is not running: a 2-core demo took 2.9x as long next to one
busy process as on a quiet machine, slower than 1 thread.

`OMP_WAIT_POLICY=PASSIVE` makes waiting threads sleep at once (libgomp: spin count 0). libgomp reads
the variable once, when torch loads it, so `configure_threads` must run before the first
`import torch`: the CLI entry point calls it first thing. A setting the user made is never changed.
Figures: benchmarks/README.md, "Threads on a busy CPU" (`benchmarks/threads.py`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

# variables that already say how OpenMP threads wait: the user's choice wins
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_threads(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set genlab's OpenMP defaults in `environ` (default `os.environ`) and return what was set.

    Sets nothing when torch is already imported (libgomp has read its settings; the call would
    look effective and not be), or when the user set any of `WAIT_VARIABLES`.
    """
    env = os.environ if environ is None else environ
    if "torch" in sys.modules or any(name in env for name in WAIT_VARIABLES):
        return {}
    env.update(DEFAULTS)
    return dict(DEFAULTS)
