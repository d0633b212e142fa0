"""Running `genlab` in a child process from a benchmark, with this checkout's source first on the
path: one place for the environment, the entry points and the failure message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# variables that set OpenMP threads or their waiting: cleared so the caller's do not leak in
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME",
                    "MKL_NUM_THREADS")
CLOCK = os.sysconf("SC_CLK_TCK")
GENLAB = ["-m", "genlab"]  # the entry point: `genlab.cli.main` sets genlab's thread defaults
# the same commands without genlab's thread defaults (no configure_threads): torch's own
BARE = ["-c", "import sys; from genlab.cli import app, eval, train; "
              "sys.exit(app.cli.main(args=sys.argv[1:], prog_name='genlab'))"]


def child_env(extra: Mapping[str, str] | None = None, *, clear_threads: bool = False
              ) -> dict[str, str]:
    """os.environ (without THREAD_VARIABLES if asked), then `extra`, with src/ on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if not (clear_threads and k in THREAD_VARIABLES)}
    env.update(extra or {})
    src = str(ROOT / "src")
    env["PYTHONPATH"] = src + os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else src
    return env


def genlab(args: Sequence[str], env: Mapping[str, str] | None = None,
           entry: Sequence[str] = GENLAB) -> subprocess.CompletedProcess:
    """Run `genlab ARGS` (default environment: `child_env()`); a failure ends the benchmark with
    the command and the end of its stderr."""
    proc = subprocess.run([sys.executable, *entry, *args],
                          env=dict(env) if env is not None else child_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"genlab {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return proc


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid`, all its threads; None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK  # utime, stime (fields 14 and 15)


def train_until(cmd: list[str], env: dict[str, str], budget: float, log: Path) -> tuple[float, float]:
    """Run `cmd` until it has used `budget` CPU seconds, then SIGTERM it; (CPU s, wall s) used."""
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        used = 0.0
        while proc.poll() is None:
            now = cpu_seconds(proc.pid)
            used = now if now is not None else used
            if used >= budget:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
                break
            time.sleep(0.5)
    if proc.returncode not in (0, 143, -signal.SIGTERM):
        raise SystemExit(f"{' '.join(cmd)}: exit {proc.returncode}; see {log}")
    return used, time.perf_counter() - start
