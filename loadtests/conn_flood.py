#!/usr/bin/env python3
"""Connection flood on loopback: N idle connections (never a byte sent) against the release
binary with its default limits, then /health latency, the server's CPU and RSS while they are
held, and what is left once they go.

Usage: python3 loadtests/conn_flood.py [path/to/myriad-orchestrator] [connections (20000)]
Settings such as HEADER_READ_TIMEOUT_MS or MAX_CONNECTIONS pass through the environment.
The connections are opened from child processes of ~9,000 each, so no process of this
script needs more than its own file-descriptor limit.
"""
import json, os, socket, subprocess, sys, time, urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/myriad-orchestrator"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
PORT = 15500
HOLDER = r"""
import socket, sys, time
socks = []
for _ in range(int(sys.argv[1])):
    try:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5)
        socks.append(s)
    except OSError:
        pass
print(len(socks), flush=True)
sys.stdin.read()  # hold them until told to go
"""

def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

def health_ms():
    t = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=5) as r:
        assert r.status == 200
    return (time.perf_counter() - t) * 1000

def connections():
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=5) as r:
        return json.load(r)["performance"]["connections"]

env = dict(os.environ, HOST="127.0.0.1", PORT=str(PORT), RUST_LOG="warn")
server = subprocess.Popen([BIN, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(200):
        try:
            health_ms(); break
        except OSError:
            time.sleep(0.05)
    idle = [health_ms() for _ in range(20)]
    rss0 = rss_mb(server.pid)
    holders, opened, t = [], 0, time.time()
    for share in [9000] * (N // 9000) + ([N % 9000] if N % 9000 else []):
        h = subprocess.Popen([sys.executable, "-c", HOLDER, str(share), str(PORT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holders.append(h)
    for h in holders:
        opened += int(h.stdout.readline())
    took = time.time() - t
    time.sleep(1.5)
    cpu0, t0 = cpu_seconds(server.pid), time.time()
    held = []
    for _ in range(20):
        held.append(health_ms()); time.sleep(0.25)
    cpu = (cpu_seconds(server.pid) - cpu0) / (time.time() - t0)
    during = connections(); rss1 = rss_mb(server.pid)
    for h in holders:
        h.stdin.close(); h.wait()
    time.sleep(2)
    after = connections(); rss2 = rss_mb(server.pid)
    p = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]
    print(f"connections opened by clients: {opened} of {N} in {took:.1f} s")
    print(f"/health idle:         p50 {p(idle, .5):.2f} ms, max {max(idle):.2f} ms")
    print(f"/health while held:   p50 {p(held, .5):.2f} ms, max {max(held):.2f} ms")
    print(f"server CPU while held: {cpu * 100:.1f} % of one core")
    print(f"server connections while held: {during}")
    print(f"server connections after:      {after}")
    print(f"server RSS: {rss0:.1f} MB idle, {rss1:.1f} MB while held, {rss2:.1f} MB after")
finally:
    server.terminate(); server.wait()
