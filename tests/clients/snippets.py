#!/usr/bin/env python3
"""Runs the reference documents' client snippets against a running proxy.

Usage: BASE_URL=http://127.0.0.1:PORT TOKEN=... python3 tests/clients/snippets.py

Each snippet is the vendor's own code from ../shared/reference/, changed only in
its base URL and token (and, for VESSL's create snippet, the comma its
published text is missing after the `data` line, without which it is not
Python). `requests` is tests/clients/requests.py, a standard-library stand-in.
The proxy must run with `--dialect baseten --dialect bifrost` and accept TOKEN.
"""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BASE_URL = os.environ["BASE_URL"].rstrip("/")
TOKEN = os.environ.get("TOKEN", "")
results = []


def snippet(name):
    def run(fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}")
        except Exception:  # noqa: BLE001 - report every failure, run the rest
            results.append((name, traceback.format_exc()))
            print(f"FAIL {name}\n{traceback.format_exc()}")
        return fn
    return run


def printed(code, env):
    """Runs snippet code as the vendor wrote it; returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, env)
    return out.getvalue()


def wait_done(check, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.2)
    raise AssertionError("the job did not finish in time")


@snippet("VESSL: create an async request, then fetch its output")
def vessl():
    env = {}
    # 002_03895792b68a4c18.txt, Python tab.
    create = f'''
import requests
base_url = "{BASE_URL}"
token = "{TOKEN}"

r = requests.post(
    f"{{base_url}}/async",
    headers={{"Authorization": f"Bearer {{token}}"}},
    json={{
        "data": {{"question": "How are you?"}},
        "method": "POST",
        "path": "/predictions/my-model",
    }}
)
request_id = r.json()["id"]
print(request_id) # prints: 98nlux8b0eu6
'''
    out = printed(create, env).strip()
    assert env["r"].status_code == 201, env["r"].status_code
    assert out == env["request_id"] and 1 <= len(out) <= 16 and out.isalnum() and out == out.lower(), out
    # 000_6693f20fc0ec75b4.txt, Python tab (request_id set by the snippet above).
    fetch = f'''
import requests
base_url = "{BASE_URL}"
token = "{TOKEN}"
request_id = "{out}"

r = requests.get(
    f"{{base_url}}/async/{{request_id}}/output",
    headers={{"Authorization": f"Bearer {{token}}"}}
)
print(r.json())
'''

    def done():
        text = printed(fetch, env)
        doc = env["r"].json()
        return (doc, text) if doc["status"] in ("completed", "failed") else None

    doc, text = wait_done(done)
    assert doc["status"] == "completed", doc
    assert doc["status_code"] == 200, doc
    assert json.loads(doc["raw_output"]) == doc["output"], doc
    assert set(doc) == {"status", "status_code", "raw_output", "output"}, doc
    assert text.startswith("{'status': 'completed', 'status_code': 200, 'raw_output': "), text


@snippet("Baseten: submit with async_predict, then get the async request")
def baseten():
    env = {"os": os}
    os.environ["BASETEN_API_KEY"] = TOKEN
    # Submitting, as Baseten's async_predict documentation does it.
    submit = f'''
import requests
import os
baseten_api_key = os.environ["BASETEN_API_KEY"]
resp = requests.post(
    "{BASE_URL}/production/async_predict",
    headers={{"Authorization": f"Api-Key {{baseten_api_key}}"}},
    json={{"model_input": {{"prompt": "hello"}}}},
)
print(resp.json())
'''
    printed(submit, env)
    assert env["resp"].status_code == 201, env["resp"].text
    request_id = env["resp"].json()["request_id"]
    # 001_b634c1868deb8b37.txt, with the base URL and the ids filled in.
    get = f'''
import requests
import os

model_id = ""
request_id = "{request_id}"
# Read secrets from environment variables
baseten_api_key = os.environ["BASETEN_API_KEY"]

resp = requests.get(
    f"{BASE_URL}/async_request/{{request_id}}",
    headers={{"Authorization": f"Api-Key {{baseten_api_key}}"}}
)

print(resp.json())
'''

    def done():
        printed(get, env)
        doc = env["resp"].json()
        return doc if doc["status"] not in ("QUEUED", "IN_PROGRESS") else None

    doc = wait_done(done)
    assert env["resp"].status_code == 200
    assert set(doc) == {"request_id", "model_id", "deployment_id", "status", "webhook_status",
                        "created_at", "status_at", "errors"}, doc
    assert doc["request_id"] == request_id
    assert doc["status"] == "SUCCEEDED", doc
    assert doc["webhook_status"] == "NO_WEBHOOK_PROVIDED"
    assert doc["errors"] == []


@snippet("Bifrost: submit a completion, then get the async job with curl")
def bifrost():
    auth = ["-H", f"Authorization: Bearer {TOKEN}"]
    submitted = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{BASE_URL}/v1/async/completions", *auth,
         "-H", "Content-Type: application/json",
         "-d", json.dumps({"model": "demo", "prompt": "Hello"})],
        check=True, capture_output=True, text=True).stdout
    job = json.loads(submitted)
    assert job["status"] == "pending", job
    assert set(job) == {"id", "status", "created_at"}, job
    # 003_f126d7a00cbb8d7f.txt: curl -X GET "http://localhost:8080/v1/async/completions/{job_id}"
    command = ["curl", "-s", "-w", "\\n%{http_code}", "-X", "GET",
               f"{BASE_URL}/v1/async/completions/{job['id']}", *auth]

    def done():
        body, code = subprocess.run(command, check=True, capture_output=True, text=True).stdout.rsplit("\n", 1)
        doc = json.loads(body)
        if code == "202":
            assert doc["status"] in ("pending", "processing"), doc
            return None
        assert code == "200", (code, doc)
        return doc

    doc = wait_done(done)
    assert doc["status"] == "completed", doc
    assert doc["status_code"] == 200
    assert {"id", "status", "created_at", "completed_at", "expires_at", "status_code", "result"} <= set(doc), doc
    missing = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
         f"{BASE_URL}/v1/async/completions/0000000000000000", *auth],
        check=True, capture_output=True, text=True).stdout
    assert missing == "404", missing


failed = sum(1 for _, e in results if e)
print(f"{len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
