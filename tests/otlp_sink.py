#!/usr/bin/env python3
"""A real OTLP/HTTP trace receiver for tests and load runs: decodes every export request
(protobuf, as the OpenTelemetry SDK sends it, gzip or not), answers 200, and tells what it
received.

  python3 tests/otlp_sink.py PORT            (prints "listening PORT" when ready)

  POST /v1/traces             an ExportTraceServiceRequest
  GET  /summary               {"requests", "spans", "by_name": {name: count}}
  GET  /spans?name=N&limit=L  the kept spans named N (all names without it): name,
                              trace_id, span_id, parent_id, attributes, links
Spans are kept for /spans up to a bound for each name (the newest 10,000 of it: a burst of
one name does not push the few spans of another out); counts are never dropped.
"""

import gzip
import json
import sys
import threading
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

KEEP = 10_000
lock = threading.Lock()
kept = defaultdict(lambda: deque(maxlen=KEEP))
by_name = Counter()
totals = {"requests": 0, "spans": 0}


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def summary(span):
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_id": span.parent_span_id.hex() or None,
        "attributes": {kv.key: value(kv.value) for kv in span.attributes},
        "links": [
            {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
            for link in span.links
        ],
        "dropped_links": span.dropped_links_count,
    }


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def reply(self, code, body, kind="application/json"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        if urlparse(self.path).path != "/v1/traces":
            return self.reply(404, {"error": "not found"})
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:  # noqa: BLE001 - a bad payload is the sender's 400
            return self.reply(400, {"error": "not an ExportTraceServiceRequest"})
        spans = [
            span
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]
        with lock:
            totals["requests"] += 1
            totals["spans"] += len(spans)
            for span in spans:
                by_name[span.name] += 1
                s = summary(span)
                kept[s["name"]].append(s)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.reply(200, answer, "application/x-protobuf")

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        with lock:
            if url.path == "/summary":
                return self.reply(200, {**totals, "by_name": dict(by_name)})
            if url.path == "/spans":
                name = query.get("name", [None])[0]
                limit = int(query.get("limit", [KEEP])[0])
                spans = list(kept.get(name, ())) if name is not None else [s for k in kept.values() for s in k]
                return self.reply(200, spans[-limit:])
        self.reply(404, {"error": "not found"})


if __name__ == "__main__":
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening {port}", flush=True)
    server.serve_forever()
