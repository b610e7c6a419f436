"""Load for the batching benchmark: clients sending one text per job.

  load.py direct URL BATCH SECONDS            the model called directly, BATCH texts a call
  load.py proxy URL CONCURRENCY SECONDS       jobs through the proxy's native API, one text each

Prints one JSON line: texts/s, p50 and p99 latency (ms), and for the proxy
the batch-size histogram read from the jobs' status documents.
"""
import json
import sys
import threading
import time
import urllib.request

TEXTS = [
    f"sentence number {i} about queues, batches and embedding models on a small machine"
    for i in range(4096)
]


def post(url, body, headers=None):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, json.loads(r.read())


def get(url, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, json.loads(r.read())


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else None


def run(workers, seconds, one):
    latencies, sizes, lock = [], {}, threading.Lock()
    stop = time.monotonic() + seconds
    counter = [0]

    def loop(w):
        while time.monotonic() < stop:
            with lock:
                n = counter[0]
                counter[0] += 1
            t0 = time.monotonic()
            texts, size = one(n)
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
        def one(i):
            texts = [TEXTS[(i * n + k) % len(TEXTS)] for k in range(n)]
            status, _ = post(f"{url}/v1/embeddings", {"model": "minilm", "input": texts if n > 1 else texts[0]})
            assert status == 200
            return n, None
        result = run(1, seconds, one)
    else:
        def one(i):
            status, doc = post(
                f"{url}/async",
                {"path": "/v1/embeddings", "data": {"model": "minilm", "input": TEXTS[i % len(TEXTS)]}},
            )
            assert status == 201, doc
            while True:
                status, doc = get(f"{url}/async/{doc['id']}", {"prefer": "wait=30"})
                if status == 200:
                    break
            assert doc["status"] == "succeeded", doc
            return 1, doc.get("batch_size")
        result = run(n, seconds, one)
    print(json.dumps({"mode": mode, "n": n, **result}))


if __name__ == "__main__":
    main()
