"""A bounded load test of `genlab serve`, against 127.0.0.1 only: U users (threads, one keep-alive
connection each) send image and text requests for S seconds; a small queue makes the server shed
load. Prints one JSON line: requests, answers by status, latency percentiles (of 200s and of
429s), answers that differed for the same request, and the server's resident memory before and
after.

    .venv/bin/python benchmarks/serve_load.py RUN_IMAGES RUN_TEXT --users 32 --seconds 60

The server is started as its own process (`python -m genlab serve`), so its memory is its own.
Targets (issue 13): 0 unexpected answers (only 200 and 429), overload answered by 429 at once and
never by a timeout, resident memory after the run within 10% of before. tests/serve runs the same
function briefly in CI, against a server in the test process.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"  # the only address this script sends to
ROOT = Path(__file__).resolve().parents[1]


def request_mix(image_model: str, text_model: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The requests the users cycle through: images of 1 to 8 per request (as PNG grids, so equal
    requests must give equal bytes) and short completions."""
    mix: list[tuple[str, dict[str, Any]]] = [
        ("/v1/images/generations", {"model": image_model, "n": n, "seed": seed,
                                    "response_format": "png_grid"})
        for n, seed in ((1, 7), (4, 8), (8, 9), (2, 10))]
    if text_model:
        mix.append(("/v1/completions", {"model": text_model, "max_tokens": 24, "seed": 3}))
    return mix


def run_load(port: int, mix: list[tuple[str, dict[str, Any]]], *, users: int = 32,
             seconds: float = 60.0, timeout: float = 30.0, token: str | None = None
             ) -> dict[str, Any]:
    """`users` threads send the requests of `mix` in turn for `seconds` (a 429 is retried after
    50 ms); returns the counts and latencies."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    statuses: Counter = Counter()
    latencies: dict[int, list[float]] = {}
    by_route: dict[str, list[float]] = {}  # the 200s of each route
    answers: dict[int, set[str]] = {}
    errors: list[str] = []
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def user(index: int) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
        k = index
        while time.monotonic() < stop:
            path, body = mix[k % len(mix)]
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, json.dumps(body), headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as e:  # a timeout is a failure here
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
                continue
            elapsed = time.perf_counter() - t0
            with lock:
                statuses[response.status] += 1
                latencies.setdefault(response.status, []).append(elapsed)
                if response.status == 200:
                    by_route.setdefault(path.rsplit("/", 1)[-1], []).append(elapsed)
                if response.status == 200:
                    key = data if path.endswith("generations") else \
                        json.loads(data)["choices"][0]["text"].encode()
                    answers.setdefault(k % len(mix), set()).add(hashlib.sha256(key).hexdigest())
            if response.status == 429:
                time.sleep(0.05)
            else:
                k += 1
        conn.close()

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0

    def pct(values: list[float], q: float) -> float | None:
        return round(1000 * sorted(values)[int(q * (len(values) - 1))], 1) if values else None

    ok, shed = latencies.get(200, []), latencies.get(429, [])
    return {"users": users, "seconds": round(wall, 1), "requests": sum(statuses.values()),
            "status": dict(sorted(statuses.items())),
            "unexpected": sum(c for s, c in statuses.items() if s not in (200, 429)),
            "errors": len(errors), "first_errors": errors[:3],
            "p50_ms": pct(ok, 0.5), "p95_ms": pct(ok, 0.95),
            "p95_429_ms": pct(shed, 0.95), "max_429_ms": pct(shed, 1.0),
            **{f"{q}_ms_{route}": pct(values, f) for route, values in sorted(by_route.items())
               for q, f in (("p50", 0.5), ("p95", 0.95))},
            "requests_per_s": round(len(ok) / wall, 1),
            "differing_answers": sum(len(v) - 1 for v in answers.values())}


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image_run")
    parser.add_argument("text_run", nargs="?")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--max-queue", type=int, default=8,
                        help="the server's queue per model (small, so that it sheds load)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server")
    args = parser.parse_args()

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    runs = [args.image_run, *([args.text_run] if args.text_run else [])]
    server = subprocess.Popen([sys.executable, "-m", "genlab", "serve", *runs, "--host",
                               LOOPBACK, "--port", "0", "--max-queue", str(args.max_queue),
                               "--device", "cpu"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = None
        for line in server.stderr:
            if match := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                port = int(match.group(1))
            if line.startswith("ready:"):
                break
        if port is None:
            raise SystemExit("the server did not start")
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        mix = request_mix(Path(args.image_run).resolve().name,
                          Path(args.text_run).resolve().name if args.text_run else None)
        run_load(port, mix, users=args.users, seconds=min(5.0, args.seconds))  # warm-up
        before = rss_mib(server.pid)
        result = run_load(port, mix, users=args.users, seconds=args.seconds)
        after = rss_mib(server.pid)
        result.update(rss_before_mib=round(before, 1), rss_after_mib=round(after, 1),
                      rss_change=round(after / before - 1, 4))
        print(json.dumps(result))
    finally:
        server.terminate()
        server.wait(60)


if __name__ == "__main__":
    main()
