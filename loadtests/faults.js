// faults.js: steady load on a concept served by two agents, while the best one fails
// mid-run (and recovers). Good = every task still succeeds (failover), p99 stays low.
// Requests are tagged by phase (before / during / after the fault) for per-phase figures.
//
//   BASE_URL      orchestrator (default http://localhost:5000)
//   RATE          requests per second (default 200)
//   DURATION_S    run length (default 45)
//   FAIL_AT_S / RECOVER_AT_S   when the agent starts failing / recovers (default 15 / 30)
//   SETTLED_AFTER_S            the "settled" phase starts this long after recovery (default 10)
//   CONCEPT / INTENT           the routed task (default lightbulb / define)
//   AGENTS                     agent names whose share of answers is reported per phase
import http from 'k6/http';
import exec from 'k6/execution';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { steady } from './rate.js';

const BASE_URL = __ENV.BASE_URL || 'http://localhost:5000';
const RATE = parseInt(__ENV.RATE || '200');
const DURATION_S = parseInt(__ENV.DURATION_S || '50');
const FAIL_AT_S = parseFloat(__ENV.FAIL_AT_S || '15');
const RECOVER_AT_S = parseFloat(__ENV.RECOVER_AT_S || '30');
const SETTLED_AT_S = RECOVER_AT_S + parseFloat(__ENV.SETTLED_AFTER_S || '10');
const AGENTS = (__ENV.AGENTS || 'Lightbulb_Definition_AI,Factbase_AI').split(',');
const PHASES = ['before', 'during', 'after', 'settled'];
// One counter per agent: tasks it answered, tagged by phase.
const answered = AGENTS.map((_, i) => new Counter(`answered_by_${i}`));
const CONCEPT = __ENV.CONCEPT || 'lightbulb';
const INTENT = __ENV.INTENT || 'define';

export const options = {
  scenarios: {
    steady: steady(RATE, DURATION_S, 50, 200),
  },
  thresholds: {
    // No 5xx, no failed task, in every phase: failover must absorb the fault.
    'http_req_failed': ['rate<0.01'],
    'checks{phase:before}': ['rate>0.99'],
    'checks{phase:during}': ['rate>0.99'],
    'checks{phase:after}': ['rate>0.99'],
    'checks{phase:settled}': ['rate>0.99'],
    'http_req_duration{phase:before}': ['p(95)<100', 'p(99)<250'],
    'http_req_duration{phase:during}': ['p(95)<150', 'p(99)<500'],
    'http_req_duration{phase:after}': ['p(95)<100', 'p(99)<250'],
    'http_req_duration{phase:settled}': ['p(95)<100', 'p(99)<250'],
    // Per-phase sub-metrics of the answer counters (always true; they make k6 keep them).
    ...Object.fromEntries(AGENTS.flatMap((_, i) =>
      PHASES.map((p) => [`answered_by_${i}{phase:${p}}`, ['count>=0']]))),
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

let seq = 0;

function phase() {
  // The scenario's start, not this VU's: VUs added under load start later.
  const t = (Date.now() - exec.scenario.startTime) / 1000;
  if (t < FAIL_AT_S) return 'before';
  if (t < RECOVER_AT_S) return 'during';
  if (t < SETTLED_AT_S) return 'after';
  return 'settled';
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
  if (res.status === 200) {
    const tasks = res.json('results') || {};
    for (const id of Object.keys(tasks)) {
      const i = AGENTS.indexOf(tasks[id].agent_name);
      if (i >= 0) answered[i].add(1, { phase: p });
    }
  }
}

export function handleSummary(data) {
  const lines = ['phase    requests  task-errors  p50(ms)  p95(ms)  p99(ms)  ' + AGENTS.map((a) => `${a} share`).join('  ')];
  for (const p of PHASES) {
    const d = data.metrics[`http_req_duration{phase:${p}}`];
    const c = data.metrics[`checks{phase:${p}}`];
    if (!d || !c) continue;
    const total = c.values.passes + c.values.fails;
    const errRate = total ? (c.values.fails / total) * 100 : 0;
    const counts = AGENTS.map((_, i) => {
      const m = data.metrics[`answered_by_${i}{phase:${p}}`];
      return m ? m.values.count : 0;
    });
    const sum = counts.reduce((a, b) => a + b, 0) || 1;
    const shares = counts.map((c, i) => `${((100 * c) / sum).toFixed(1)}%`.padStart(AGENTS[i].length + 6)).join('  ');
    lines.push(`${p.padEnd(8)} ${String(total / 2).padStart(8)}  ${errRate.toFixed(2).padStart(10)}%  ${d.values['p(50)'].toFixed(2).padStart(7)}  ${d.values['p(95)'].toFixed(2).padStart(7)}  ${d.values['p(99)'].toFixed(2).padStart(7)}  ${shares}`);
  }
  return { stdout: lines.join('\n') + '\n', 'faults-summary.json': JSON.stringify(data, null, 1) };
}
