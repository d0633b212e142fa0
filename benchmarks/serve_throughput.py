"""Images/s and latency of `genlab serve` at 1, 8 and 32 concurrent clients, micro-batching on and
off, on one server: the real app under uvicorn on 127.0.0.1, in this process; the clients (threads
with one keep-alive connection each, sending `{"model", "n", "seed"}` requests back to back) in a
child process, so that they do not share the server's interpreter. Batching is switched on the same
server between rounds, so both modes see the same model, machine and moment; rounds alternate
(on, off, on, off, ...).

    .venv/bin/python benchmarks/serve_throughput.py --run runs/fmnist-dcgan
    .venv/bin/python benchmarks/serve_throughput.py --train-steps 300      # trains one first

Prints one JSON line per (clients, mode) with images/s, p50/p95 latency in ms and the mean images
per pass, then a summary line against the targets of issue 13: at 32 clients, batching gives >= 5x
the unbatched images/s, with p95 latency <= 2x a single request's (1 client, batching on, p50).
Also the cost of the fixed pass size: one pass of `sample_pass_rows` rows against a native
batch-1 forward of the same network; and the server's CPU time per request and its share of one
core (the clients run in a child process), which tell the forward passes from the rest.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
# torch, uvicorn and genlab are imported by the server's side only: the clients' child process
# starts in a fraction of a second


def start(run: str, threads: int, http: str) -> tuple[Any, int, Any]:
    import torch
    import uvicorn

    from genlab.apps.serve import ServeSettings, create_app
    from genlab.apps.serve_models import find_runs

    torch.set_num_threads(threads)
    app = create_app(find_runs([run], None), ServeSettings(max_queue=1024, timeout_s=600))
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                           http=http, loop="auto" if http != "h11" else "asyncio"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not app.state.genlab.ready:
        if app.state.genlab.failed:
            raise SystemExit(app.state.genlab.failed)
        time.sleep(0.05)
    return server, sock.getsockname()[1], app


def round_of(port: int, name: str, clients: int, seconds: float, n: int) -> dict:
    """A round of clients in a child process (this script with --client-port)."""
    out = subprocess.run([sys.executable, __file__, "--client-port", str(port), "--model", name,
                          "--clients", str(clients), "--seconds", str(seconds), "--n", str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def clients_round(port: int, name: str, clients: int, seconds: float, n: int) -> dict:
    """`clients` threads send requests for `seconds`; latencies of each answer."""
    stop = time.monotonic() + seconds
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[int] = []

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=600)
        seed = index * 1_000_000
        while time.monotonic() < stop:
            body = json.dumps({"model": name, "n": n, "seed": seed})
            t0 = time.perf_counter()
            conn.request("POST", "/v1/images/generations", body,
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - t0
            with lock:
                (latencies if response.status == 200 else failures).append(
                    elapsed if response.status == 200 else response.status)
            seed += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {"requests": len(latencies), "failures": len(failures), "wall": wall,
            "latencies": ordered}


def pass_cost(model: Any, repeats: int = 20) -> dict:
    """ms of one sample_many pass (sample_pass_rows rows) against a native batch-1 forward."""
    import torch

    from genlab.models.base import SampleCall

    def timed(fn) -> float:
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return 1000 * statistics.median(times)

    g = torch.Generator()
    one = timed(lambda: model.sample(1, generator=g))
    padded = timed(lambda: model.sample_many([SampleCall(1, g)]))
    full = timed(lambda: model.sample_many([SampleCall(model.sample_pass_rows, g)]))
    return {"native_batch1_ms": round(one, 2), "pass_of_1_image_ms": round(padded, 2),
            "pass_of_full_rows_ms": round(full, 2), "pass_rows": model.sample_pass_rows}


def train_run(steps: int) -> str:
    import genlab

    out = Path(tempfile.mkdtemp(prefix="serve-bench-")) / "fmnist-dcgan"
    print(f"training dcgan on fashion-mnist for {steps} steps into {out}", file=sys.stderr)
    genlab.train("dcgan", "fashion-mnist", steps=steps, out=out, device="cpu")
    return str(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="an image run (default: train a dcgan briefly)")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=10.0, help="per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per (clients, mode)")
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--threads", type=int, help="torch threads of the server (default: "
                        "torch's)")
    parser.add_argument("--http", default="auto", choices=["auto", "h11", "httptools"],
                        help="uvicorn's HTTP parser (auto: httptools, with uvloop, if installed)")
    parser.add_argument("--client-port", type=int, help=argparse.SUPPRESS)  # the child's side
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_port:
        print(json.dumps(clients_round(args.client_port, args.model, args.clients[0],
                                       args.seconds, args.n)))
        return
    import torch

    args.threads = args.threads or torch.get_num_threads()
    run = args.run or train_run(args.train_steps)
    server, port, app = start(run, args.threads, args.http)
    served = next(iter(app.state.genlab.models.values()))
    queue = served.queue
    results: dict[tuple[int, bool], list[dict]] = {}
    round_of(port, served.name, max(args.clients), 2.0, args.n)  # warm-up
    for r in range(args.rounds):
        for clients in args.clients:
            for batching in ((True, False) if r % 2 == 0 else (False, True)):
                queue.batching = batching
                passes, cpu = queue.stats.passes, time.process_time()
                out = round_of(port, served.name, clients, args.seconds, args.n)
                passes = queue.stats.passes - passes
                out["images_per_pass"] = args.n * out["requests"] / max(1, passes)
                # the server's CPU time (this process: the clients run in a child)
                out["cpu_s"], out["passes"] = time.process_time() - cpu, passes
                results.setdefault((clients, batching), []).append(out)
    summary = {}
    for (clients, batching), rounds in sorted(results.items()):
        latencies = sorted(x for o in rounds for x in o["latencies"])
        wall = sum(o["wall"] for o in rounds)
        row = {"clients": clients, "batching": batching, "n": args.n, "threads": args.threads,
               "http": args.http,
               "images_per_s": round(args.n * len(latencies) / wall, 1),
               "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
               "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
               "requests": len(latencies), "failures": sum(o["failures"] for o in rounds),
               "images_per_pass": round(statistics.mean(o["images_per_pass"] for o in rounds),
                                        1),
               "server_cpu_ms_per_request": round(1000 * sum(o["cpu_s"] for o in rounds)
                                                  / max(1, len(latencies)), 2),
               "server_cpu_share": round(sum(o["cpu_s"] for o in rounds) / wall, 2)}
        summary[clients, batching] = row
        print(json.dumps(row), flush=True)
    top = max(args.clients)
    on, off, single = summary[top, True], summary[top, False], summary[min(args.clients), True]
    print(json.dumps({"clients": top, "speedup": round(on["images_per_s"] / off["images_per_s"],
                                                        2),
                      "p95_over_single_p50": round(on["p95_ms"] / single["p50_ms"], 2),
                      "targets": "speedup >= 5, p95_over_single_p50 <= 2",
                      **pass_cost(served.model)}), flush=True)
    server.should_exit = True


if __name__ == "__main__":
    main()
