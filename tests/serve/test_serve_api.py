"""`genlab serve`'s API against a live server: the routes, the same bytes as `genlab sample`,
strict requests, model names that are not paths, and micro-batches that do not change a byte."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from genlab.apps.serve_schemas import MODEL_NAME
from genlab.modalities import MODALITIES
from genlab.modalities.image import ImageModality


def sse_events(body: bytes) -> list:
    """The `data:` payloads of a server-sent-events body, JSON-decoded ([DONE] kept as is)."""
    events = []
    for block in body.decode().split("\n\n"):
        if block.startswith("data: "):
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# --- the routes ------------------------------------------------------------------------------------

def test_health_and_models(live, serve_runs):
    assert live.json("GET", "/livez") == (200, {"status": "ok", "models": [], "message": None})
    status, ready = live.json("GET", "/readyz")
    assert status == 200 and ready["status"] == "ready"
    assert ready["models"] == ["cdcgan", "dcgan", "tinygpt"]
    status, listing = live.json("GET", "/v1/models")
    assert status == 200 and listing["object"] == "list"
    cards = {m["id"]: m for m in listing["data"]}
    assert set(cards) == {"cdcgan", "dcgan", "tinygpt"}
    manifest = json.loads((serve_runs["cdcgan"] / "checkpoint" / "manifest.json").read_text())
    c = cards["cdcgan"]
    assert (c["name"], c["family"], c["classes"], c["step"]) == ("cdcgan", "dcgan", 4, 4)
    assert isinstance(MODALITIES[c["modality"]], ImageModality)
    assert c["sha256"] == manifest["model.safetensors"] and c["eval"] is None
    assert c["endpoint"] == "/v1/images/generations" and cards["dcgan"]["classes"] is None
    text = cards["tinygpt"]
    report = json.loads((serve_runs["tinygpt"] / "eval.json").read_text())
    assert text["endpoint"] == "/v1/completions" and text["classes"] is None
    assert text["eval"]["val_loss"] == report["val_loss"] and text["eval"]["step"] == 3
    assert live.json("GET", "/v1/models/tinygpt") == (200, text)
    status, err = live.json("GET", "/v1/models/nope")
    assert status == 404 and err["error"]["param"] == "model"


def test_openapi_lists_the_routes_and_the_models(live):
    status, schema = live.json("GET", "/openapi.json")
    assert status == 200
    assert {"/v1/models", "/v1/models/{model}", "/v1/images/generations", "/v1/completions",
            "/livez", "/readyz"} <= set(schema["paths"])
    bodies = schema["components"]["schemas"]
    assert bodies["ImagesRequest"]["properties"]["model"]["enum"] == ["cdcgan", "dcgan"]
    assert bodies["CompletionsRequest"]["properties"]["model"]["enum"] == ["tinygpt"]
    assert bodies["ImagesRequest"]["additionalProperties"] is False
    for path in ("/docs", "/"):  # offline pages: no address outside the server in them
        status, headers, html = live.get(path)
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"http://" not in html.replace(b"http://${location.host}", b"") and \
            b"https://" not in html
        assert "script-src 'sha256-" in headers["content-security-policy"]


# --- the same bytes as `genlab sample` -------------------------------------------------------------

def test_images_are_the_bytes_of_genlab_sample(live, serve_runs, run_cli, tmp_path):
    run = serve_runs["cdcgan"]
    code, _, err = run_cli("sample", run, "--n", "16", "--seed", "7", "--out", tmp_path / "g.png",
                           "--device", "cpu")
    assert code == 0, err
    status, headers, grid = live.post("/v1/images/generations",
                                      {"model": "cdcgan", "n": 16, "seed": 7,
                                       "response_format": "png_grid"})
    assert status == 200 and headers["content-type"] == "image/png"
    assert grid == (tmp_path / "g.png").read_bytes()

    code, _, err = run_cli("sample", run, "--n", "5", "--seed", "7", "--label", "3",
                           "--out", tmp_path / "s.npz", "--device", "cpu")
    assert code == 0, err
    arrays = np.load(tmp_path / "s.npz")
    status, out = live.json("POST", "/v1/images/generations",
                            {"model": "cdcgan", "n": 5, "seed": 7, "label": 3})
    assert status == 200 and out["seed"] == 7 and out["model"] == "cdcgan"
    assert out["model_sha256"] == headers["x-genlab-model-sha256"]
    assert [d["label"] for d in out["data"]] == [3] * 5
    images = np.stack([decode_png(base64.b64decode(d["b64_json"])) for d in out["data"]])
    assert images.shape == (5, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, arrays["images"]) and arrays["labels"].tolist() == [3] * 5


def test_labels_default_to_every_class_in_turn_and_a_list_is_honoured(live):
    status, out = live.json("POST", "/v1/images/generations", {"model": "cdcgan", "n": 6})
    assert status == 200 and [d["label"] for d in out["data"]] == [0, 1, 2, 3, 0, 1]
    status, out = live.json("POST", "/v1/images/generations",
                            {"model": "cdcgan", "n": 3, "label": [2, 0, 2]})
    assert status == 200 and [d["label"] for d in out["data"]] == [2, 0, 2]
    status, out = live.json("POST", "/v1/images/generations", {"model": "dcgan", "n": 2})
    assert status == 200 and [d["label"] for d in out["data"]] == [None, None]
    _, a = live.json("POST", "/v1/images/generations", {"model": "dcgan", "n": 2, "seed": 1})
    assert a["data"] != out["data"]  # another seed, other images


def test_completions_are_the_text_of_genlab_sample(live, serve_runs, run_cli):
    args = ("--prompt", "the quick", "--max-new-tokens", "30", "--temperature", "0.8",
            "--top-k", "5", "--top-p", "0.95", "--seed", "1", "--device", "cpu")
    code, stdout, err = run_cli("sample", serve_runs["tinygpt"], *args)
    assert code == 0, err
    body = {"model": "tinygpt", "prompt": "the quick", "max_tokens": 30, "temperature": 0.8,
            "top_k": 5, "top_p": 0.95, "seed": 1}
    status, out = live.json("POST", "/v1/completions", body)
    assert status == 200 and out["object"] == "text_completion"
    choice = out["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "the quick" + choice["text"] + "\n" == stdout and len(choice["text"]) == 30

    status, headers, raw = live.post("/v1/completions", {**body, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    pieces = [e["choices"][0]["text"] for e in events[:-2]]
    assert len(pieces) == 30 and "".join(pieces) == choice["text"]  # one event per token


# --- micro-batching --------------------------------------------------------------------------------

def test_32_concurrent_requests_give_the_bytes_of_one_alone(live):
    body = {"model": "cdcgan", "n": 3, "seed": 7, "response_format": "png_grid"}
    status, _, alone = live.post("/v1/images/generations", body)
    assert status == 200
    others = [{"model": "cdcgan", "n": 1 + i % 5, "seed": 100 + i} for i in range(16)]
    queue = live.queue("cdcgan")
    passes = len(queue.stats.calls_per_pass)
    with ThreadPoolExecutor(48) as pool:
        mine = [pool.submit(live.post, "/v1/images/generations", body) for _ in range(32)]
        mates = [pool.submit(live.post, "/v1/images/generations", b) for b in others]
        results = [f.result() for f in mine]
        assert all(f.result()[0] == 200 for f in mates)
    assert all(status == 200 and data == alone for status, _, data in results)
    batched = list(queue.stats.calls_per_pass)[passes:]
    assert max(batched) > 1, "no two requests shared a pass; the test proves nothing"


def test_batching_off_gives_the_same_bytes(start_server, live):
    body = {"model": "cdcgan", "n": 10, "seed": 3, "label": 1}
    _, on = live.json("POST", "/v1/images/generations", body)
    with start_server(names=("cdcgan",), batching=False) as alone:
        _, off = alone.json("POST", "/v1/images/generations", body)
        assert max(alone.queue("cdcgan").stats.calls_per_pass) == 1
    assert on["data"] == off["data"]


# --- strict requests -------------------------------------------------------------------------------

BAD_IMAGES = [
    ({"model": "cdcgan", "n": "4"}, "n"),  # no coercion
    ({"model": "cdcgan", "n": 4.0}, "n"),
    ({"model": "cdcgan", "n": True}, "n"),
    ({"model": "cdcgan", "n": 0}, "n"),
    ({"model": "cdcgan", "n": 65}, "n"),
    ({"model": "cdcgan", "seed": -1}, "seed"),
    ({"model": "cdcgan", "seed": 2**63}, "seed"),
    ({"model": "cdcgan", "seed": 10**400}, "seed"),
    ({"model": "cdcgan", "label": 4}, "label"),
    ({"model": "cdcgan", "label": [0, 1]}, "label"),  # n is 1
    ({"model": "cdcgan", "label": [True]}, "label"),
    ({"model": "cdcgan", "label": "3"}, "label"),
    ({"model": "dcgan", "label": 0}, "label"),  # unconditional
    ({"model": "cdcgan", "size": "1024x1024"}, "size"),  # OpenAI's fields are refused
    ({"model": "cdcgan", "quality": "hd"}, "quality"),
    ({"model": "cdcgan", "response_format": "url"}, "response_format"),
    ({"model": "cdcgan", "steps": 10}, "steps"),  # no sampling options in this family
    ({"model": "cdcgan", "sampler": "ddim"}, "sampler"),
    ({"model": "cdcgan", "guidance": 2.0}, "guidance"),
    ({"model": "tinygpt"}, "model"),  # a text model
    ({"model": 3}, "model"),
    ({"n": 1}, "model"),
]
BAD_COMPLETIONS = [
    ({"model": "tinygpt", "max_tokens": -1}, "max_tokens"),
    ({"model": "tinygpt", "max_tokens": 10**6}, "max_tokens"),
    ({"model": "tinygpt", "temperature": -0.5}, "temperature"),
    ({"model": "tinygpt", "temperature": "hot"}, "temperature"),
    ({"model": "tinygpt", "top_k": 0}, "top_k"),
    ({"model": "tinygpt", "top_p": 0}, "top_p"),
    ({"model": "tinygpt", "top_p": 1.5}, "top_p"),
    ({"model": "tinygpt", "prompt": 12}, "prompt"),
    ({"model": "tinygpt", "prompt": "QUICK ☃"}, "prompt"),  # not in the vocabulary
    ({"model": "tinygpt", "stream": "yes"}, "stream"),
    ({"model": "tinygpt", "n": 2}, "n"),
    ({"model": "tinygpt", "label": 1}, "label"),
    ({"model": "cdcgan", "prompt": "x"}, "model"),
]


@pytest.mark.parametrize(("body", "field"), BAD_IMAGES)
def test_bad_image_requests_are_422_naming_the_field(live, body, field):
    status, headers, raw = live.post("/v1/images/generations", body)
    error = json.loads(raw)["error"]
    assert status == 422 and error["param"] == field, error
    assert headers["content-type"] == "application/json" and "\n" not in error["message"]


@pytest.mark.parametrize(("body", "field"), BAD_COMPLETIONS)
def test_bad_completion_requests_are_422_naming_the_field(live, body, field):
    for stream in (False, True):
        status, _, raw = live.post("/v1/completions", {**body, "stream": stream}
                                   if "stream" not in body else body)
        error = json.loads(raw)["error"]
        assert status == 422 and error["param"] == field, error


@pytest.mark.parametrize("raw", [
    b"", b"   ", b"{", b"[1, 2]", b'"model"', b"null", b'{"model": "cdcgan", "n": 1e999}',
    b'{"model": "cdcgan", "n": NaN}', b'{"model": "cdcgan", "n": -Infinity}',
    b'{"model": "cdcgan", "seed": 1' + b"0" * 5000 + b"}", b"[" * 20000 + b"]" * 20000,
    b"\xff\xfe\x00garbage", '{"model": "cdcgan", "n": 1e999}'.encode("utf-16"),
])
def test_any_body_is_a_4xx_json_error_without_traceback(live, raw):
    for path in ("/v1/images/generations", "/v1/completions"):
        status, headers, data = live.post(path, None, raw=raw)
        assert 400 <= status < 500 and headers["content-type"] == "application/json"
        error = json.loads(data)["error"]
        assert error["message"] and "Traceback" not in data.decode()


def test_a_float_field_refuses_infinity_with_its_name(live):
    status, _, raw = live.post("/v1/completions", None,
                               raw=b'{"model": "tinygpt", "temperature": 1e999}')
    assert status == 422 and json.loads(raw)["error"]["param"] == "temperature"


def test_form_encoded_json_from_curl_is_accepted(live):
    status, _, raw = live.post("/v1/images/generations", None,
                               raw=b'{"model": "dcgan", "n": 1}',
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200 and len(json.loads(raw)["data"]) == 1


def test_bodies_over_64_kib_are_413(live):
    big = json.dumps({"model": "tinygpt", "prompt": "a" * (70 * 1024)}).encode()
    status, _, raw = live.post("/v1/completions", None, raw=big)
    assert status == 413 and json.loads(raw)["error"]["type"] == "too_large"
    # the same without a Content-Length: chunked, counted as it arrives
    import http.client
    conn = http.client.HTTPConnection(live.host, live.port, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for start in range(0, len(big), 8192):
        chunk = big[start:start + 8192]
        try:
            conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            break
    response = conn.getresponse()
    assert response.status == 413
    conn.close()


# --- model names are never paths -------------------------------------------------------------------

TRAVERSAL = [
    "../cdcgan", "..", ".", "../../etc/passwd", "cdcgan/../cdcgan", "/etc/passwd",
    "/tmp", "C:\\Windows\\win.ini", "..\\..\\boot.ini", "%2e%2e%2fcdcgan", "%2e%2e/",
    "..%2f..%2fetc%2fpasswd", "cdcgan%00", "cdcgan\x00", "\x00", "cdcgan\n", " cdcgan",
    "cdcgan ", "CDCGAN", "cdcgan.", "\u2024\u2024/cdcgan",  # one-dot leaders
    "\uff0e\uff0e\uff0fcdcgan",  # fullwidth ../
    "cdcgan\u200b", "сdcgan",  # a zero-width space; a Cyrillic es
    "~/runs/cdcgan", "file:///etc/passwd", "a" * 129, "a" * 100_000, "",
    "runs/cdcgan",
]


def test_30_traversal_and_look_alike_names_are_never_200(live):
    assert len(TRAVERSAL) == 30
    for name in TRAVERSAL:
        status, _, raw = live.post("/v1/images/generations", {"model": name, "n": 1})
        assert status in (404, 413, 422), (name, status)
        error = json.loads(raw)["error"]
        assert error["param"] in ("model", None) and "Traceback" not in raw.decode()
        from urllib.parse import quote
        status, _, _ = live.get(f"/v1/models/{quote(name, safe='')}"[:8000])
        assert status in (404, 414, 422), (name, status)
    assert MODEL_NAME.startswith("^[A-Za-z0-9]")


# --- guards ---------------------------------------------------------------------------------------

def test_host_and_origin_guards(live):
    status, _, raw = live.get("/v1/models", headers={"Host": "evil.example"})
    assert status == 403 and json.loads(raw)["error"]["param"] == "host"
    status, _, raw = live.post("/v1/images/generations", {"model": "dcgan"},
                               headers={"Origin": "http://evil.example"})
    assert status == 403 and json.loads(raw)["error"]["param"] == "origin"
    status, headers, _ = live.post("/v1/images/generations", {"model": "dcgan"},
                                   headers={"Origin": live.url})
    assert status == 200 and "access-control-allow-origin" not in headers  # no CORS by default
    status, _, _ = live.get("/livez", headers={"Host": f"localhost:{live.port}"})
    assert status == 200
