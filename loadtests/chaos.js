// chaos.js: every request a cache miss, spread over two replicas, while run-chaos.sh restarts
// the graph server, hangs it (SIGSTOP) and kills Redis. Requests are tagged by phase; the
// summary gives, per phase, requests, failed tasks and latency.
//
//   TARGETS     comma-separated replica URLs (default http://127.0.0.1:5000)
//   RATE        requests per second (default 200)
//   PHASES      comma-separated name:start_s, in order (set by run-chaos.sh)
//   DURATION_S  run length (default 70)
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Rate } from 'k6/metrics';
import { steady } from './rate.js';

const TARGETS = (__ENV.TARGETS || 'http://127.0.0.1:5000').split(',');
const RATE = parseInt(__ENV.RATE || '200');
const DURATION_S = parseInt(__ENV.DURATION_S || '70');
const PHASES = (__ENV.PHASES || 'all:0').split(',').map((p) => {
  const [name, start] = p.split(':');
  return { name, start: parseFloat(start) };
});
const taskFailed = new Rate('task_failed');

export const options = {
  scenarios: {
    steady: steady(RATE, DURATION_S, 100, 400),
  },
  // Per-phase sub-metrics exist only when a threshold names them (these always hold).
  thresholds: Object.fromEntries(PHASES.flatMap((p) => [
    [`http_req_duration{phase:${p.name}}`, ['max>=0']],
    [`task_failed{phase:${p.name}}`, ['rate>=0']],
  ])),
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

let seq = 0;

function phase() {
  // The scenario's start, not this VU's: VUs added under load start later.
  const t = (Date.now() - exec.scenario.startTime) / 1000;
  let current = PHASES[0].name;
  for (const p of PHASES) if (t >= p.start) current = p.name;
  return current;
}

export default function () {
  const p = phase();
  seq += 1;
  const target = TARGETS[seq % TARGETS.length];
  const body = JSON.stringify({
    tasks: [{ task_id: 1, concept: 'lightbulb', intent: 'define', args: { vu: __VU, n: seq } }],
  });
  const res = http.post(`${target}/process`, body, {
    headers: { 'Content-Type': 'application/json' },
    tags: { phase: p },
    timeout: '15s',
  });
  const ok = res.status === 200 && res.json('status') === 'success';
  taskFailed.add(!ok, { phase: p });
  check(res, { 'task succeeded': () => ok });
}

export function handleSummary(data) {
  const lines = ['phase           requests  failed-tasks  p50(ms)  p99(ms)  max(ms)'];
  for (const p of PHASES) {
    const d = data.metrics[`http_req_duration{phase:${p.name}}`];
    const f = data.metrics[`task_failed{phase:${p.name}}`];
    if (!d || !f) continue;
    const total = f.values.passes + f.values.fails;
    lines.push(`${p.name.padEnd(15)} ${String(total).padStart(8)}  ${String(f.values.passes).padStart(12)}  ${d.values['p(50)'].toFixed(2).padStart(7)}  ${d.values['p(99)'].toFixed(2).padStart(7)}  ${d.values.max.toFixed(0).padStart(7)}`);
  }
  return { stdout: lines.join('\n') + '\n' };
}
