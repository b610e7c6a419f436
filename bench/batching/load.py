"""Load for the batching benchmark: clients sending one text per job.

  load.py direct URL BATCH SECONDS            the model called directly, BATCH texts a call
  load.py proxy URL CONCURRENCY SECONDS       jobs through the proxy's native API, one text each

Prints one JSON line: texts/s, p50 and p99 latency (ms), and for the proxy
the batch-size histogram read from the jobs' status documents.
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

TEXTS = [
    f"sentence number {i} about queues, batches and embedding models on a small machine"
    for i in range(4096)
]


class Client:
    """One keep-alive connection, as a client's HTTP pool keeps one per
    worker: a connection per request would measure TCP set-up, in the
    client and in the server, rather than the model and the queue."""

    def __init__(self, base):
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname, url.port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json", **(headers or {})} if payload else (headers or {})
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                r = self.conn.getresponse()
                return r.status, json.loads(r.read())
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The server closed an idle keep-alive connection: open another.
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else None


def run(workers, seconds, one, make_client):
    latencies, sizes, lock = [], {}, threading.Lock()
    stop = time.monotonic() + seconds
    counter = [0]

    def loop(w):
        client = make_client()
        while time.monotonic() < stop:
            with lock:
                n = counter[0]
                counter[0] += 1
            t0 = time.monotonic()
            texts, size = one(client, n)
            dt = time.monotonic() - t0
            with lock:
                latencies.append((dt, texts))
                if size is not None:
                    sizes[size] = sizes.get(size, 0) + 1

    started = time.monotonic()
    threads = [threading.Thread(target=loop, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    texts = sum(n for _, n in latencies)
    ms = [d * 1000 for d, _ in latencies]
    return {
        "texts_per_s": round(texts / elapsed, 1),
        "calls": len(latencies),
        "p50_ms": round(percentile(ms, 50), 1),
        "p99_ms": round(percentile(ms, 99), 1),
        "batch_sizes": dict(sorted(sizes.items())),
    }


def main():
    mode, url, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    if mode == "direct":
        def one(client, i):
            texts = [TEXTS[(i * n + k) % len(TEXTS)] for k in range(n)]
            status, _ = client.request(
                "POST", "/v1/embeddings", {"model": "minilm", "input": texts if n > 1 else texts[0]}
            )
            assert status == 200
            return n, None
        result = run(1, seconds, one, lambda: Client(url))
    else:
        def one(client, i):
            status, doc = client.request(
                "POST",
                "/async",
                {"path": "/v1/embeddings", "data": {"model": "minilm", "input": TEXTS[i % len(TEXTS)]}},
            )
            assert status == 201, doc
            while True:
                status, doc = client.request("GET", f"/async/{doc['id']}", headers={"prefer": "wait=30"})
                if status == 200 and doc["status"] not in ("queued", "in_progress"):
                    break
            assert doc["status"] == "succeeded", doc
            return 1, doc.get("batch_size")
        result = run(n, seconds, one, lambda: Client(url))
    print(json.dumps({"mode": mode, "n": n, **result}))


if __name__ == "__main__":
    main()
