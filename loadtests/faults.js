// faults.js: steady load on a concept served by two agents, while the best one fails
// mid-run (and recovers). Good = every task still succeeds (failover), p99 stays low.
// Requests are tagged by phase (before / during / after the fault) for per-phase figures.
//
//   BASE_URL      orchestrator (default http://localhost:5000)
//   RATE          requests per second (default 200)
//   DURATION_S    run length (default 45)
//   FAIL_AT_S / RECOVER_AT_S   when the agent starts failing / recovers (default 15 / 30)
//   CONCEPT / INTENT           the routed task (default lightbulb / define)
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:5000';
const RATE = parseInt(__ENV.RATE || '200');
const DURATION_S = parseInt(__ENV.DURATION_S || '45');
const FAIL_AT_S = parseFloat(__ENV.FAIL_AT_S || '15');
const RECOVER_AT_S = parseFloat(__ENV.RECOVER_AT_S || '30');
const CONCEPT = __ENV.CONCEPT || 'lightbulb';
const INTENT = __ENV.INTENT || 'define';

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION_S}s`,
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  thresholds: {
    // No 5xx, no failed task, in every phase: failover must absorb the fault.
    'http_req_failed': ['rate<0.01'],
    'checks{phase:before}': ['rate>0.99'],
    'checks{phase:during}': ['rate>0.99'],
    'checks{phase:after}': ['rate>0.99'],
    'http_req_duration{phase:before}': ['p(95)<100', 'p(99)<250'],
    'http_req_duration{phase:during}': ['p(95)<150', 'p(99)<500'],
    'http_req_duration{phase:after}': ['p(95)<100', 'p(99)<250'],
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

const started = Date.now();
let seq = 0;

function phase() {
  const t = (Date.now() - started) / 1000;
  if (t < FAIL_AT_S) return 'before';
  if (t < RECOVER_AT_S) return 'during';
  return 'after';
}

export default function () {
  const p = phase();
  seq += 1;
  const body = JSON.stringify({ tasks: [{ task_id: `${__VU}-${seq}`, concept: CONCEPT, intent: INTENT }] });
  const res = http.post(`${BASE_URL}/process`, body, {
    headers: { 'Content-Type': 'application/json' },
    tags: { phase: p },
  });
  check(res, {
    'status is 200': (r) => r.status === 200,
    'task succeeded': (r) => r.status === 200 && r.json('status') === 'success',
  }, { phase: p });
}

export function handleSummary(data) {
  const lines = ['phase   requests  task-errors  p50(ms)  p95(ms)  p99(ms)'];
  for (const p of ['before', 'during', 'after']) {
    const d = data.metrics[`http_req_duration{phase:${p}}`];
    const c = data.metrics[`checks{phase:${p}}`];
    if (!d || !c) continue;
    const total = c.values.passes + c.values.fails;
    const errRate = total ? (c.values.fails / total) * 100 : 0;
    lines.push(`${p.padEnd(7)} ${String(total / 2).padStart(8)}  ${errRate.toFixed(2).padStart(10)}%  ${d.values['p(50)'].toFixed(2).padStart(7)}  ${d.values['p(95)'].toFixed(2).padStart(7)}  ${d.values['p(99)'].toFixed(2).padStart(7)}`);
  }
  return { stdout: lines.join('\n') + '\n', 'faults-summary.json': JSON.stringify(data, null, 1) };
}
