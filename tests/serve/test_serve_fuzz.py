"""Schemathesis against the live OpenAPI schema of `genlab serve`: positive and negative cases,
200 per operation that takes input, with the token, and 0 server errors.

Its checks: no 5xx, every status and content type documented, bodies that match their schema,
invalid data refused with a 4xx, and routes that ignore a missing token flagged. The per-operation
counts come from schemathesis's own event report, so the test fails if it ran fewer.

One worker, so that a seed is one run: schemathesis fills request bodies with values it read from
earlier responses (the model names of GET /v1/models), and with two workers that pool changed
under a running Hypothesis search, which then took its choice tree for exhausted and stopped
POST /v1/audio/generations after 25 cases in about one run in three on a loaded machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

TOKEN = "fuzz-token-0123456789"
MODELS = ("cdcgan", "tinygpt")  # the served models
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,negative_data_rejection,ignored_auth")
WITH_INPUT = ("POST /v1/images/generations", "POST /v1/completions", "POST /v1/audio/generations",
              "GET /v1/models/{model}")
# invalid data must get one of these (schemathesis's default list also accepts any 5xx)
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "413", "422"]
"""


def test_schemathesis_finds_no_server_error(start_server, tmp_path):
    report = tmp_path / "events.ndjson"
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    # max_tokens <= 8 keeps each completion short; n up to 64 images as in production
    with start_server(names=MODELS, token=TOKEN, max_tokens=8) as live:
        proc = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file",
             str(tmp_path / "schemathesis.toml"), "run", f"{live.url}/openapi.json",
             "--mode", "all", "--max-examples", "200", "--seed", "1", "--checks", CHECKS,
             "--header", f"Authorization: Bearer {TOKEN}", "--phases", "coverage,fuzzing",
             "--workers", "1", "--no-shrink", "--report", "ndjson",
             "--report-ndjson-path", str(report)],
            capture_output=True, text=True, timeout=900,
            cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    cases: Counter = Counter()
    modes: Counter = Counter()
    served: Counter = Counter()  # cases whose body names a served model, not an unknown one
    for line in report.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        label = finished["recorder"]["label"]
        for case in finished["recorder"]["cases"].values():
            cases[finished["phase"], label] += 1
            modes[label, case["value"]["meta"]["generation"]["mode"]] += 1
            body = case["value"].get("body")
            served[label] += isinstance(body, dict) and body.get("model") in MODELS
    for operation in WITH_INPUT:
        assert cases["fuzzing", operation] >= 200, (operation, cases)
        assert modes[operation, "positive"] >= 20 and modes[operation, "negative"] >= 1, modes
    for operation in WITH_INPUT[:3]:  # the bodies: many ways to be wrong
        assert modes[operation, "negative"] >= 100, modes
        assert served[operation] >= 20, served  # not only 404s for unknown model names
    tested = {label for _, label in cases}
    assert tested == {*WITH_INPUT, "GET /livez", "GET /readyz", "GET /v1/models"}
