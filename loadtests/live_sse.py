"""Concurrent Server-Sent Event streams against POST /process (Accept: text/event-stream).

Usage: python3 loadtests/live_sse.py BASE_URL [STREAMS=500] [DURATION_S=20] [BODY_JSON]
Each of STREAMS clients opens a stream, reads it to its `done` event, and opens the next,
for DURATION_S. Prints JSON: streams completed, failures, and percentiles of the time to the
first `task` event and to `done` (ms), and the slowest client's share of completions (a
starved stream would show as a client with far fewer than the others).
"""
import asyncio, json, statistics, sys, time

import httpx

BASE = sys.argv[1]
STREAMS = int(sys.argv[2]) if len(sys.argv) > 2 else 500
DURATION = float(sys.argv[3]) if len(sys.argv) > 3 else 20
BODY = sys.argv[4] if len(sys.argv) > 4 else json.dumps({"tasks": [
    {"task_id": 1, "concept": "lightbulb", "intent": "define"},
    {"task_id": 2, "concept": "lightbulb", "intent": "function"}]})
HEADERS = {"accept": "text/event-stream", "content-type": "application/json",
           "cache-control": "no-cache"}

first, done, failures, per_client = [], [], 0, []


async def client(http, deadline):
    global failures
    n = 0
    while time.monotonic() < deadline:
        start = time.monotonic()
        got_first, event = False, None
        try:
            async with http.stream("POST", f"{BASE}/process", content=BODY, headers=HEADERS) as r:
                if r.status_code != 200:
                    failures += 1
                    continue
                async for line in r.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        if event == "task" and not got_first:
                            first.append((time.monotonic() - start) * 1000)
                            got_first = True
                        elif event == "done":
                            done.append((time.monotonic() - start) * 1000)
                            n += 1
                            break
        except Exception:
            failures += 1
    per_client.append(n)


def pct(xs, p):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 2) if xs else None


async def main():
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        deadline = time.monotonic() + DURATION
        await asyncio.gather(*(client(http, deadline) for _ in range(STREAMS)))
    print(json.dumps({
        "streams": STREAMS, "completed": len(done), "failures": failures,
        "first_event_ms": {"p50": pct(first, 0.5), "p99": pct(first, 0.99), "max": pct(first, 1)},
        "done_ms": {"p50": pct(done, 0.5), "p99": pct(done, 0.99)},
        "per_client": {"min": min(per_client), "median": statistics.median(per_client),
                       "max": max(per_client)},
    }))

asyncio.run(main())
