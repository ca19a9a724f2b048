"""The load generator of `serve_load.py`, run as its own process so that its threads do not compete with the
server's for the interpreter lock unnoticed (they still share the machine's cores, as any client on the same host).

Replays a request stream (a JSON list of [task, text]) with --concurrency client threads over HTTP, one input per
request, and writes what it measured (latency per answered request, answers, errors, wall time) as JSON:

    python benchmarks/load_client.py --port 8000 --stream stream.json --concurrency 16 --out result.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path


def replay(port: int, stream: list, concurrency: int, time_limit: float, generate: int = 0) -> dict:
    import httpx

    lat: list = [None] * len(stream)
    answers: list = [None] * len(stream)
    errors: list[str] = []
    nxt = iter(range(len(stream)))
    lock = threading.Lock()
    t0 = time.perf_counter()

    def worker():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as c:
            while time.perf_counter() - t0 < time_limit:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                task, text = stream[i]
                s = time.perf_counter()
                if generate:
                    r = c.post(f"/v1/tasks/{task}/generate", json={"input": text, "max_new_tokens": generate})
                else:
                    r = c.post(f"/v1/tasks/{task}/predict", json={"input": text})
                if r.status_code == 200:
                    lat[i] = time.perf_counter() - s  # only answered requests count
                    answers[i] = r.json()["outputs" if generate else "predictions"][0]
                else:
                    errors.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = [x for x in lat if x is not None]
    if not done:
        raise SystemExit(f"no request was answered; first error: {errors[0] if errors else 'none (time limit)'}")
    qs = statistics.quantiles(done, n=100) if len(done) >= 2 else [done[0]] * 99
    return {"completed": len(done), "errors": len(errors), "first_error": errors[0] if errors else None, "seconds": wall,
            "requests_per_second": len(done) / wall, "p50_ms": 1000 * statistics.median(done), "p99_ms": 1000 * qs[98],
            "mean_ms": 1000 * statistics.fmean(done), "answers": answers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--stream", required=True, help="a JSON list of [task, text]")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--time-limit", type=float, default=180.0)
    ap.add_argument("--generate", type=int, default=0, help="greedy tokens per request on the generate route (0: predict)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = replay(a.port, json.loads(Path(a.stream).read_text()), a.concurrency, a.time_limit, a.generate)
    Path(a.out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
