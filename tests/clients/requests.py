"""A stand-in for the `requests` package, standard library only.

The reference documents' client snippets use `requests`; CI has no network
but the package registries, and the snippets must run unchanged but for their
base URL and token. This module gives them the part of `requests` they use:
`get`, `post` and `delete` with `headers=` and `json=`, and a response with
`status_code`, `headers`, `text`, `content` and `json()`.
"""

import json as _json
import urllib.error
import urllib.request


class Response:
    def __init__(self, status_code, headers, content):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self):
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return _json.loads(self.content)

    def raise_for_status(self):
        if self.status_code >= 400:
            raise RuntimeError(f"HTTP {self.status_code}: {self.text}")


def request(method, url, headers=None, json=None, data=None, timeout=30):
    headers = dict(headers or {})
    body = data
    if json is not None:
        body = _json.dumps(json).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())


def get(url, **kw):
    return request("GET", url, **kw)


def post(url, **kw):
    return request("POST", url, **kw)


def delete(url, **kw):
    return request("DELETE", url, **kw)
