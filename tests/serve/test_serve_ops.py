"""`genlab serve` under pressure and at its edges: the token, CORS, a full queue (429), a deadline
(504), clients that leave, loading and a model that fails to load, SIGTERM, and the command line's
refusals (a public host without a token, a busy port, the missing extra)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serve_support import Live

import genlab.apps.serve as serve_module
from genlab.apps.serve_models import find_runs
from genlab.apps.serve_run import check_exposure
from genlab.errors import UserError

TOKEN = "t0ken-with-enough-chars"
ROOT = Path(__file__).resolve().parents[2]


def wait_for(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Gate:
    """Holds a served model's `sample_many` until opened, counting the calls it ran."""

    def __init__(self, model) -> None:
        self.model, self.inner = model, model.sample_many
        self.open, self.entered, self.calls = threading.Event(), threading.Event(), []
        model.sample_many = self

    def __call__(self, calls):
        self.entered.set()
        assert self.open.wait(60)
        self.calls.append([c.n for c in calls])
        return self.inner(calls)

    def close(self) -> None:
        self.open.set()
        del self.model.sample_many


def raw_post(live, path: str, body: dict) -> socket.socket:
    """A request sent on a socket the test closes itself (a client that goes away)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection((live.host, live.port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


# --- the token and CORS ----------------------------------------------------------------------------

def test_the_token_guards_every_route_but_livez(start_server):
    with start_server(names=("dcgan",), token=TOKEN) as live:
        for path in ("/v1/models", "/readyz", "/openapi.json", "/docs", "/"):
            status, headers, raw = live.get(path, auth=False)
            assert status == 401 and json.loads(raw)["error"]["type"] == "unauthorized", path
            challenge = "Basic" if path in ("/", "/docs") else "Bearer"
            assert headers["www-authenticate"].startswith(challenge)
        assert live.get("/livez", auth=False)[0] == 200
        for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Token {TOKEN}",
                       "Basic !!!", "Basic " + base64.b64encode(b"user:wrong").decode()):
            assert live.get("/v1/models", headers={"Authorization": header})[0] == 401, header
        status, _, raw = live.post("/v1/images/generations", {"model": "dcgan"}, auth=False)
        assert status == 401
        assert live.get("/v1/models")[0] == 200  # Bearer TOKEN
        basic = "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()
        assert live.get("/", headers={"Authorization": basic})[0] == 200  # a browser's login


def test_no_cors_unless_asked_and_never_with_credentials(start_server):
    origin = "http://app.example"
    with start_server(names=("dcgan",), cors_origins=(origin,)) as live:
        status, headers, _ = live.request("OPTIONS", "/v1/images/generations", headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert status == 200 and headers["access-control-allow-origin"] == origin
        assert "access-control-allow-credentials" not in headers
        status, headers, _ = live.post("/v1/images/generations", {"model": "dcgan"},
                                       headers={"Origin": origin})
        assert status == 200 and headers["access-control-allow-origin"] == origin
        status, headers, _ = live.post("/v1/images/generations", {"model": "dcgan"},
                                       headers={"Origin": "http://other.example"})
        assert status == 403 and "access-control-allow-origin" not in headers


# --- backpressure, deadlines, clients that leave ---------------------------------------------------

def test_a_full_queue_answers_429_at_once_with_retry_after(start_server):
    with start_server(names=("cdcgan",), max_queue=2) as live:
        gate = Gate(live.state.models["cdcgan"].model)
        body = {"model": "cdcgan", "n": 2, "seed": 5}
        try:
            with ThreadPoolExecutor(4) as pool:
                first = pool.submit(live.post, "/v1/images/generations", body)
                assert gate.entered.wait(30)  # the worker holds the first request
                waiting = [pool.submit(live.post, "/v1/images/generations", body)
                           for _ in range(2)]
                wait_for(lambda: len(live.queue("cdcgan")._jobs) == 2, what="two queued")
                t0 = time.monotonic()
                status, headers, raw = live.post("/v1/images/generations", body)
                assert time.monotonic() - t0 < 5  # refused, not held
                assert status == 429 and int(headers["retry-after"]) >= 1
                assert json.loads(raw)["error"]["type"] == "overloaded"
                gate.open.set()
                answers = [f.result() for f in (first, *waiting)]
        finally:
            gate.close()
        assert [a[0] for a in answers] == [200, 200, 200]
        assert answers[0][2] == answers[1][2] == answers[2][2]  # one request, one answer


def test_a_request_past_its_deadline_is_504_and_never_runs(start_server):
    with start_server(names=("cdcgan",), timeout_s=0.5) as live:
        gate = Gate(live.state.models["cdcgan"].model)
        try:
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(live.post, "/v1/images/generations", {"model": "cdcgan"})
                assert gate.entered.wait(30)
                status, _, raw = live.post("/v1/images/generations",
                                           {"model": "cdcgan", "n": 7})
                assert status == 504 and json.loads(raw)["error"]["type"] == "timeout"
                gate.open.set()
                assert first.result()[0] == 504  # its pass started, but too late
        finally:
            gate.close()
    assert gate.calls == [[1]]  # the server has stopped: the late request was never computed


def test_an_image_client_that_leaves_is_dropped_from_the_queue(start_server):
    with start_server(names=("cdcgan",)) as live:
        gate = Gate(live.state.models["cdcgan"].model)
        try:
            with ThreadPoolExecutor(2) as pool:
                first = pool.submit(live.post, "/v1/images/generations", {"model": "cdcgan"})
                assert gate.entered.wait(30)
                sock = raw_post(live, "/v1/images/generations", {"model": "cdcgan", "n": 9})
                wait_for(lambda: len(live.queue("cdcgan")._jobs) == 1, what="the queued job")
                sock.close()
                wait_for(lambda: live.queue("cdcgan").stats.dropped == 1, what="the drop")
                gate.open.set()
                assert first.result()[0] == 200
        finally:
            gate.close()
        assert gate.calls == [[1]]


@pytest.mark.parametrize("stream", [True, False])
def test_a_text_client_that_leaves_stops_its_generation_within_one_token(live, stream):
    before = len(live.state.finished_streams)
    sock = raw_post(live, "/v1/completions",
                    {"model": "tinygpt", "max_tokens": 2000, "seed": 3, "stream": stream})
    if stream:
        seen = b""
        while seen.count(b"data: ") < 3:  # a few tokens arrived: the stream is under way
            seen += sock.recv(4096)
    else:
        wait_for(lambda: live.queue("tinygpt").streams == 1, what="the generation")
        time.sleep(0.05)
    sock.close()
    wait_for(lambda: len(live.state.finished_streams) > before, what="the stream to end")
    record = live.state.finished_streams[-1]
    assert record["reason"] == "gone", record
    assert record["steps"] < 2000 and record["steps_when_gone"] is not None
    assert record["steps"] - record["steps_when_gone"] <= 1, record
    assert live.queue("tinygpt").streams == 0


def test_text_requests_beyond_max_streams_get_429(start_server):
    with start_server(names=("tinygpt",), max_streams=1) as live:
        sock = raw_post(live, "/v1/completions",
                        {"model": "tinygpt", "max_tokens": 2000, "stream": True})
        try:
            assert sock.recv(4096)  # the first is streaming
            status, headers, _ = live.post("/v1/completions", {"model": "tinygpt"})
            assert status == 429 and "retry-after" in headers
        finally:
            sock.close()
        wait_for(lambda: live.queue("tinygpt").streams == 0, what="the slot")
        assert live.post("/v1/completions", {"model": "tinygpt", "max_tokens": 2})[0] == 200


# --- loading ---------------------------------------------------------------------------------------

def test_readyz_is_503_until_every_model_is_loaded(start_server, monkeypatch):
    release = threading.Event()
    real = serve_module.load_served

    def slow(spec, **kw):
        assert release.wait(60)
        return real(spec, **kw)

    monkeypatch.setattr(serve_module, "load_served", slow)
    with start_server(names=("dcgan",), wait_ready=False) as live:
        assert live.get("/livez")[0] == 200
        status, body = live.json("GET", "/readyz")
        assert status == 503 and body["status"] == "loading" and body["models"] == []
        status, headers, _ = live.post("/v1/images/generations", {"model": "dcgan"})
        assert status == 503 and headers["retry-after"] == "1"
        assert live.get("/v1/models")[0] == 503
        release.set()
        wait_for(lambda: live.state.ready, what="the model")
        assert live.json("GET", "/readyz") == (200, {"status": "ready", "models": ["dcgan"],
                                                    "message": None})


@pytest.fixture
def corrupt_run(serve_runs, tmp_path) -> Path:
    run = tmp_path / "broken"
    shutil.copytree(serve_runs["dcgan"], run)
    weights = run / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    return run


def test_a_model_that_fails_verification_is_never_served(corrupt_run, run_cli):
    code, _, err = run_cli("serve", corrupt_run, "--port", "0")
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("genlab: error: cannot serve") and "broken" in last
    assert re.search(r"sha-?256|hash|corrupt|checksum", last, re.I), last


# --- the command line ------------------------------------------------------------------------------

def test_exposure_rules():
    assert check_exposure("127.0.0.1", None, False) == ("127.0.0.1", "localhost", "::1")
    assert check_exposure("::1", None, False) is not None
    assert check_exposure("localhost", None, False) is not None
    assert check_exposure("0.0.0.0", TOKEN, False) is None  # any Host: the token protects
    assert check_exposure("0.0.0.0", None, True) is None
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.org"):
        with pytest.raises(UserError, match="--token"):
            check_exposure(host, None, False)
    for token in ("short", "has a space in it ok", "ünïcödé-token-1234567"):
        with pytest.raises(UserError, match="--token must be"):
            check_exposure("127.0.0.1", token, False)


def test_the_command_line_refuses_before_listening(serve_runs, run_cli, tmp_path, monkeypatch):
    run = serve_runs["dcgan"]
    code, _, err = run_cli("serve", run, "--host", "0.0.0.0")
    assert code == 2 and "--token" in err and "--insecure" in err and len(err.splitlines()) == 1
    code, _, err = run_cli("serve")
    assert code == 2 and "--runs-dir" in err
    code, _, err = run_cli("serve", tmp_path / "nothing")
    assert code == 2 and "no run at" in err
    odd = tmp_path / "my run"
    shutil.copytree(run, odd)
    code, _, err = run_cli("serve", odd)
    assert code == 2 and "not a plain name" in err
    other = tmp_path / "x" / "dcgan"
    shutil.copytree(run, other)
    code, _, err = run_cli("serve", run, other)
    assert code == 2 and "two runs are named 'dcgan'" in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    code, _, err = run_cli("serve", run, "--port", busy.getsockname()[1])
    busy.close()
    assert code == 2 and "cannot listen on 127.0.0.1" in err
    monkeypatch.setenv("GENLAB_SERVE_TOKEN", "short")
    code, _, err = run_cli("serve", run)
    assert code == 2 and "--token must be" in err


def test_runs_dir_serves_every_run_in_it(serve_runs, tmp_path):
    specs = find_runs([], str(serve_runs["dcgan"].parent))
    assert [s.name for s in specs] == ["cdcgan", "dcgan", "tinygpt"]
    assert [s.name for s in find_runs([str(serve_runs["dcgan"])],
                                      str(serve_runs["dcgan"].parent))] == \
        ["dcgan", "cdcgan", "tinygpt"]  # a run named twice is served once
    with pytest.raises(UserError, match="holds no run folders"):
        find_runs([], str(tmp_path))


def test_a_missing_extra_says_how_to_install_it(serve_runs, run_cli, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("genlab.apps.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    code, _, err = run_cli("serve", serve_runs["dcgan"])
    assert code == 2 and "pip install genlab[serve]" in err and "Traceback" not in err


def test_sigterm_finishes_the_requests_in_flight_and_exits(serve_runs):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "serve", str(serve_runs["tinygpt"]),
                             "--port", "0"], stderr=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    try:
        port = None
        for line in proc.stderr:
            lines.append(line)
            if match := re.search(r"http://127\.0\.0\.1:(\d+)/", line):
                port = int(match.group(1))
            if line.startswith("ready:"):
                break
        assert port is not None, "".join(lines)
        live = Live("127.0.0.1", port, None)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(live.post, "/v1/completions",
                                 {"model": "tinygpt", "max_tokens": 1500, "seed": 2})
            time.sleep(0.3)  # the request is being generated
            proc.send_signal(signal.SIGTERM)
            status, _, raw = answer.result(timeout=60)
        assert status == 200 and len(json.loads(raw)["choices"][0]["text"]) == 1500
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
