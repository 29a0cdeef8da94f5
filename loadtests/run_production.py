#!/usr/bin/env python3
"""The product as it is deployed, in one run, with its invariants checked.

Starts on loopback: an OTLP/HTTP receiver (tests/otlp_sink.py), a redis-server, the Bolt
graph server (ArcadeDB), three demo agents (two fast, one answering in 300 ms), and two
release replicas with everything on (Redis, the graph with learning, tracing always_on).
Then, at the same time:
  - k6 (loadtests/production.js): /process from START_RATE req/s to PEAK_RATE and back,
    half cacheable, half no-cache; clients with a 100 ms timeout on the slow agent; a
    stream of hostile bodies
  - SSE and WebSocket clients that leave mid-batch
  - /health probed on both replicas every 100 ms, and the breakers watched every 500 ms
After the load: CPU and RSS of each replica, spans per request, learning's spans, logs.

Usage: python3 loadtests/run_production.py BIN [--out FILE]
Exit 0 when every invariant holds, 1 otherwise; prints one JSON document of figures.
"""

import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.abspath(sys.argv[1])
OUT = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
START_RATE = int(os.environ.get("START_RATE", "200"))
PEAK_RATE = int(os.environ.get("PEAK_RATE", "3000"))
STAGE_S = int(os.environ.get("STAGE_S", "15"))
PW = "production-password"
WORK = tempfile.mkdtemp(prefix="myriad-production-")
children = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, argv, env=None, cwd=None):
    log = open(os.path.join(WORK, f"{name}.log"), "w")
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    children.append(p)
    return p


def wait_port(port, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def get(url, timeout=2.0, data=None, headers=None):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def metrics(base):
    return get(f"{base}/metrics", headers={"accept": "text/plain"})[1].decode()


def series(text, name):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ports = {k: free_port() for k in
             ["sink", "redis", "bolt", "arcade", "def", "facts", "slow", "a", "b"]}
    # The receiver, Redis, the graph server.
    start("sink", [sys.executable, os.path.join(ROOT, "tests/otlp_sink.py"), str(ports["sink"])])
    start("redis", ["redis-server", "--port", str(ports["redis"]), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", WORK])
    pkg = subprocess.check_output(
        [sys.executable, "-c",
         "import arcadedb_embedded, os; print(os.path.dirname(arcadedb_embedded.__file__))"],
        text=True).strip()
    os.makedirs(os.path.join(WORK, "arcade"), exist_ok=True)
    arcade = os.path.join(WORK, "arcade")
    start("arcade", [f"{pkg}/jre/bin/java", "-Xmx512m", "-XX:+UseSerialGC", "-cp", f"{pkg}/jars/*",
                     f"-Darcadedb.server.rootPassword={PW}", f"-Darcadedb.server.rootPath={arcade}",
                     f"-Darcadedb.server.databaseDirectory={arcade}/databases",
                     "-Darcadedb.server.plugins=Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
                     "-Darcadedb.server.httpIncomingHost=127.0.0.1",
                     f"-Darcadedb.server.httpIncomingPort={ports['arcade']}",
                     "-Darcadedb.bolt.host=127.0.0.1", f"-Darcadedb.bolt.port={ports['bolt']}",
                     "com.arcadedb.server.ArcadeDBServer"], cwd=arcade)
    for k in ["sink", "redis", "bolt", "arcade"]:
        wait_port(ports[k])
    import base64
    auth = "Basic " + base64.b64encode(f"root:{PW}".encode()).decode()
    for _ in range(100):
        try:
            get(f"http://127.0.0.1:{ports['arcade']}/api/v1/server",
                data=b'{"command":"create database myriad"}', headers={"Authorization": auth})
            break
        except Exception:  # noqa: BLE001 - the server is still starting
            time.sleep(0.1)
    # The agents: two fast ones for "lightbulb", a slow one for "sun".
    start("agent-def", [BIN, "demo-agent", "--name", "lightbulb_definition", "--host", "127.0.0.1",
                        "--port", str(ports["def"])])
    start("agent-facts", [BIN, "demo-agent", "--name", "factbase", "--host", "127.0.0.1",
                          "--port", str(ports["facts"])])
    start("agent-slow", [BIN, "demo-agent", "--name", "factbase", "--host", "127.0.0.1",
                         "--port", str(ports["slow"]), "--delay-ms", "300"])
    for k in ["def", "facts", "slow"]:
        wait_port(ports[k])
    seed = {
        "regions": [{"name": "Technology"}],
        "concepts": [{"name": "lightbulb", "primary_definition": "An electric light source."},
                     {"name": "sun", "primary_definition": "The star at the centre."}],
        "agents": [
            {"name": "Lightbulb_Definition_AI", "type": "static",
             "endpoint": f"http://127.0.0.1:{ports['def']}/query", "intents": ["define"]},
            {"name": "Factbase_AI", "type": "static",
             "endpoint": f"http://127.0.0.1:{ports['facts']}/query", "intents": ["define"]},
            {"name": "Slow_AI", "type": "static",
             "endpoint": f"http://127.0.0.1:{ports['slow']}/query", "intents": ["define"]},
        ],
        "handles": [
            {"agent": "Lightbulb_Definition_AI", "concept": "lightbulb", "weight": 0.9},
            {"agent": "Factbase_AI", "concept": "lightbulb", "weight": 0.5},
            {"agent": "Slow_AI", "concept": "sun", "weight": 0.5},
        ],
    }
    with open(os.path.join(WORK, "seed.json"), "w") as f:
        json.dump(seed, f)
    graph_env = {**os.environ, "NEO4J_URI": f"bolt://127.0.0.1:{ports['bolt']}",
                 "NEO4J_USER": "root", "NEO4J_PASSWORD": PW, "NEO4J_DATABASE": "myriad"}
    subprocess.run([BIN, "seed-graph", "--file", os.path.join(WORK, "seed.json")], env=graph_env,
                   check=True, stdout=subprocess.DEVNULL)
    replicas = {}
    for k in ["a", "b"]:
        env = {**graph_env, "HOST": "127.0.0.1", "PORT": str(ports[k]),
               "REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/", "DEMO_AGENTS": "off",
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{ports['sink']}",
               "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_SAMPLER": "always_on",
               "LOG_FORMAT": "json", "RUST_LOG": "info", "RATE_LIMIT_PER_CLIENT": "0"}
        replicas[k] = (start(f"replica-{k}", [BIN, "serve"], env=env),
                       f"http://127.0.0.1:{ports[k]}")
    for k in ["a", "b"]:
        wait_port(ports[k])
    bases = [base for _, base in replicas.values()]
    pids = {base: p.pid for p, base in replicas.values()}

    # Warm-up (pools, caches, the learned weights' first write), then the baseline.
    body = json.dumps({"tasks": [{"task_id": 1, "concept": "lightbulb", "intent": "define"}]}).encode()
    for i in range(200):
        get(f"{bases[i % 2]}/process", data=body, headers={"content-type": "application/json"},
            timeout=10)
    time.sleep(3)
    rss_cold = {b: rss_kib(pids[b]) for b in bases}
    # The pre-load value: at the end of the first stage (START_RATE req/s, every kind of
    # client), before the ramp to saturation; the cold value is reported beside it.
    rss_before = {}

    def sample_pre_load():
        time.sleep(STAGE_S - 1)
        rss_before.update({b: rss_kib(pids[b]) for b in bases})

    stop = threading.Event()
    health = {b: [] for b in bases}
    health_failures = []
    breakers_opened = set()

    def probe(base):
        while not stop.is_set():
            t = time.monotonic()
            try:
                get(f"{base}/health", timeout=2)
                health[base].append((time.monotonic() - t) * 1000)
            except Exception as e:  # noqa: BLE001 - a missed probe is the finding
                health_failures.append(f"{base}: {e}")
            time.sleep(0.1)

    def watch_breakers():
        while not stop.is_set():
            for base in bases:
                try:
                    for m in re.finditer(r'myriad_agent_breaker_state\{agent="([^"]+)"\} (\S+)',
                                         metrics(base)):
                        if float(m.group(2)) != 0:
                            breakers_opened.add(f"{base} {m.group(1)} state {m.group(2)}")
                except Exception:  # noqa: BLE001 - /health probes cover a silent replica
                    pass
            time.sleep(0.5)

    leavers = {"sse": 0, "ws": 0, "errors": []}

    async def leave_sse(deadline):
        import httpx
        batch = json.dumps({"tasks": [
            {"task_id": 1, "concept": "lightbulb", "intent": "define"},
            {"task_id": 2, "concept": "sun", "intent": "define"},
            {"task_id": 3, "concept": "sun", "intent": "define", "args": {"n": 2}}]})
        async with httpx.AsyncClient(timeout=10) as http:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                try:
                    async with http.stream("POST", f"{bases[n % 2]}/process", content=batch,
                                           headers={"accept": "text/event-stream",
                                                    "content-type": "application/json",
                                                    "cache-control": "no-cache"}) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("event: task"):
                                break  # the first result, then the client leaves
                    leavers["sse"] += 1
                except Exception as e:  # noqa: BLE001
                    leavers["errors"].append(f"sse: {e!r}")
                await asyncio.sleep(0.2)

    async def leave_ws(deadline):
        import websockets
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                url = bases[n % 2].replace("http://", "ws://") + "/ws"
                async with websockets.connect(url, open_timeout=5) as ws:
                    await ws.send(json.dumps({"type": "process", "id": n, "tasks": [
                        {"task_id": 1, "concept": "lightbulb", "intent": "define"},
                        {"task_id": 2, "concept": "sun", "intent": "define", "args": {"n": n}}]}))
                    await asyncio.wait_for(ws.recv(), 5)  # the first message, then leave
                leavers["ws"] += 1
            except Exception as e:  # noqa: BLE001
                leavers["errors"].append(f"ws: {e!r}")
            await asyncio.sleep(0.2)

    def run_leavers(seconds):
        deadline = time.monotonic() + seconds

        async def all_of_them():
            await asyncio.gather(*[leave_sse(deadline) for _ in range(3)],
                                 *[leave_ws(deadline) for _ in range(3)])
        asyncio.run(all_of_them())

    threads = [threading.Thread(target=probe, args=(b,)) for b in bases]
    threads.append(threading.Thread(target=watch_breakers))
    threads.insert(0, threading.Thread(target=sample_pre_load))
    threads.append(threading.Thread(target=run_leavers, args=(STAGE_S * 5,)))
    for t in threads:
        t.start()
    k6_summary = os.path.join(WORK, "k6.json")
    k6_env = {**os.environ, "TARGETS": ",".join(bases), "START_RATE": str(START_RATE),
              "PEAK_RATE": str(PEAK_RATE), "STAGE_S": str(STAGE_S), "SUMMARY": k6_summary}
    k6 = subprocess.run(["k6", "run", "--quiet", "--no-usage-report",
                         os.path.join(ROOT, "loadtests/production.js")],
                        env=k6_env, capture_output=True, text=True)
    load_ended = time.monotonic()
    threads[-1].join()

    # Back to idle: for each replica, the end of the first one-second window under 5 % of a
    # core (both replicas sampled in the same windows).
    idle = {b: {"after_s": None, "samples": []} for b in bases}
    while time.monotonic() - load_ended < 8 and any(v["after_s"] is None for v in idle.values()):
        t0, c0 = time.monotonic(), {b: cpu_ticks(pids[b]) for b in bases}
        time.sleep(1)
        for base in bases:
            if idle[base]["after_s"] is not None:
                continue
            share = (cpu_ticks(pids[base]) - c0[base]) / 100 / (time.monotonic() - t0)
            idle[base]["samples"].append(round(share, 3))
            if share < 0.05:
                idle[base]["after_s"] = round(time.monotonic() - load_ended, 1)
    # RSS: sampled until every replica is back within 20 % of its pre-load value (idle
    # connections to the agents close after the pool's 60 s idle timeout), at most 75 s.
    rss_after = {b: [] for b in bases}
    rss_back = {b: None for b in bases}
    while time.monotonic() - load_ended < 75 and any(v is None for v in rss_back.values()):
        for b in bases:
            rss = rss_kib(pids[b])
            rss_after[b].append((round(time.monotonic() - load_ended, 1), rss))
            if rss_back[b] is None and rss <= rss_before[b] * 1.2:
                rss_back[b] = round(time.monotonic() - load_ended, 1)
        time.sleep(1)
    rss_after = {b: [v[0], v[-1]] for b, v in rss_after.items()}
    stop.set()
    for t in threads[:-1]:
        t.join()
    time.sleep(2)  # the last spans leave (export every 500 ms)

    texts = {b: metrics(b) for b in bases}
    spans = {r: sum(series(t, f'myriad_trace_spans_total{{result="{r}"}}') for t in texts.values())
             for r in ["exported", "failed", "dropped"]}
    tasks = {s: sum(series(t, f'myriad_tasks_total{{status="{s}"}}') for t in texts.values())
             for s in ["success", "error", "cancelled"]}
    sink = json.loads(get(f"http://127.0.0.1:{ports['sink']}/summary")[1])
    by_name = sink["by_name"]
    learn = json.loads(get(f"http://127.0.0.1:{ports['sink']}/spans?name=learn")[1])
    process_spans = sink["spans"] - sum(by_name.get(n, 0) for n in
                                        ["GET /health", "GET /metrics", "learn", "GET /ws"])
    process_requests = by_name.get("POST /process", 0)
    logs_bad = []
    for name in os.listdir(WORK):
        if name.startswith("replica-") and name.endswith(".log"):
            with open(os.path.join(WORK, name)) as f:
                for line in f:
                    if '"level":"ERROR"' in line or "panicked" in line:
                        logs_bad.append(f"{name}: {line.strip()[:300]}")
    try:
        k6s = json.load(open(k6_summary))
    except (OSError, ValueError):
        k6s = {"error": k6.stderr[-2000:]}
    with open(os.path.join(WORK, "k6.log"), "w") as f:
        f.write(k6.stdout + k6.stderr)
    k6s["warnings"] = [line[:300] for line in k6.stderr.splitlines() if "source=console" in line][:10]
    all_health = sorted(x for v in health.values() for x in v)
    p99 = all_health[min(len(all_health) - 1, len(all_health) * 99 // 100)] if all_health else None

    figures = {
        "k6": k6s,
        "health": {"probes": len(all_health), "p50_ms": round(statistics.median(all_health), 2)
                   if all_health else None, "p99_ms": round(p99, 2) if p99 else None,
                   "max_ms": round(all_health[-1], 2) if all_health else None,
                   "failures": health_failures[:10]},
        "idle_after_load": idle,
        "rss_kib": {"cold": rss_cold, "before": rss_before, "after_s_kib": rss_after, "back_after_s": rss_back},
        "spans": {**spans, "received": sink["spans"], "by_name": by_name,
                  "per_process_request": round(process_spans / max(process_requests, 1), 2),
                  "learn_spans": len(learn),
                  "learn_links_max": max((len(s["links"]) for s in learn), default=0)},
        "tasks": tasks,
        "leavers": {"sse": leavers["sse"], "ws": leavers["ws"],
                    "errors": leavers["errors"][:5]},
        "breakers_opened": sorted(breakers_opened),
        "bad_log_lines": logs_bad[:10],
    }
    budget = 3 + 3 * 1 + 3 * 1
    checks = {
        "/health p99 < 100 ms": p99 is not None and p99 < 100 and not health_failures,
        "CPU under 5 % within 5 s of the load's end": all(
            v["after_s"] is not None and v["after_s"] <= 5 for v in idle.values()),
        "RSS back within 20 % of its pre-load value (within 75 s)": all(
            v is not None for v in rss_back.values()),
        f"spans per request within the budget ({budget})":
            figures["spans"]["per_process_request"] <= budget
            and figures["spans"]["learn_links_max"] <= 128,
        "spans counted: none failed, none lost": spans["failed"] == 0
            and sink["spans"] >= spans["exported"],
        "no breaker opens on a healthy agent": not breakers_opened,
        "0 failed tasks an agent could serve": isinstance(k6s.get("main_failed_tasks"), int)
            and k6s["main_failed_tasks"] == 0,
        "impatient clients never answered in time (no fast breaker_open)":
            k6s.get("impatient_answered_in_time", 1) == 0 and k6s.get("impatient_requests", 0) > 0,
        "hostile bodies: every one a 4xx JSON error": k6s.get("hostile_wrong_answer", 1) == 0,
        "no panic, no ERROR line": not logs_bad,
    }
    figures["checks"] = checks
    doc = json.dumps(figures, indent=2)
    print(doc)
    if OUT:
        with open(OUT, "w") as f:
            f.write(doc + "\n")
    failed = [k for k, ok in checks.items() if not ok]
    for k, ok in checks.items():
        print(("PASS " if ok else "FAIL ") + k, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        code = main()
    finally:
        for p in children:
            p.kill()
        for p in children:
            p.wait()
        if os.environ.get("KEEP_LOGS"):
            print(f"logs kept in {WORK}", file=sys.stderr)
        else:
            shutil.rmtree(WORK, ignore_errors=True)
    sys.exit(code)
