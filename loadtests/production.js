// production.js: the product as it is deployed, under a load that climbs past saturation
// and comes back (run by run_production.py, which starts everything and checks the
// invariants). Three scenarios at once:
//   main       /process from START_RATE req/s up to PEAK_RATE and back, over both replicas;
//              half the requests repeat (cacheable), half send Cache-Control: no-cache
//   impatient  clients whose timeout (100 ms) is shorter than the slow agent's latency
//   hostile    bad bodies: malformed JSON, wrong types, empty batches, over the size limit,
//              wrong content type; every one must be a 4xx JSON error with a code
//
//   TARGETS     comma-separated replica URLs
//   START_RATE  (200) PEAK_RATE (3000) STAGE_S (15)
//   SUMMARY     where the JSON summary goes
import http from 'k6/http';
import { Counter, Rate, Trend } from 'k6/metrics';

const TARGETS = (__ENV.TARGETS || 'http://127.0.0.1:5000').split(',');
const START = parseInt(__ENV.START_RATE || '200');
const PEAK = parseInt(__ENV.PEAK_RATE || '3000');
const STAGE = parseInt(__ENV.STAGE_S || '15');

const taskFailed = new Rate('task_failed');
const refused = new Counter('refused');
const answered = new Trend('answered_ms', true);
const impatientSent = new Counter('impatient_sent');
const impatientAnswered = new Counter('impatient_answered_in_time');
const hostileWrong = new Counter('hostile_wrong_answer');

export const options = {
  discardResponseBodies: false,
  scenarios: {
    main: {
      executor: 'ramping-arrival-rate',
      exec: 'main',
      startRate: START,
      timeUnit: '1s',
      preAllocatedVUs: 200,
      maxVUs: 1500,
      stages: [
        { target: START, duration: `${STAGE}s` },
        { target: PEAK, duration: `${STAGE}s` },
        { target: PEAK, duration: `${STAGE}s` },
        { target: START, duration: `${STAGE}s` },
        { target: START, duration: `${STAGE}s` },
      ],
    },
    impatient: {
      executor: 'constant-arrival-rate',
      exec: 'impatient',
      rate: 4,
      timeUnit: '1s',
      duration: `${STAGE * 5}s`,
      preAllocatedVUs: 10,
      maxVUs: 20,
    },
    hostile: {
      executor: 'constant-arrival-rate',
      exec: 'hostile',
      rate: 20,
      timeUnit: '1s',
      duration: `${STAGE * 5}s`,
      preAllocatedVUs: 10,
      maxVUs: 50,
    },
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(95)', 'p(99)', 'max'],
};

let seq = 0;
const target = () => TARGETS[(seq += 1) % TARGETS.length];

export function main() {
  const cached = seq % 2 === 0;
  const args = cached ? { n: seq % 20 } : { vu: __VU, n: seq };
  const headers = { 'Content-Type': 'application/json' };
  if (!cached) headers['Cache-Control'] = 'no-cache';
  const res = http.post(
    `${target()}/process`,
    JSON.stringify({ tasks: [{ task_id: 1, concept: 'lightbulb', intent: 'define', args }] }),
    { headers, timeout: '15s', tags: { cached: String(cached) } },
  );
  if (res.status === 200) {
    answered.add(res.timings.duration);
    const failed = res.json('status') !== 'success';
    taskFailed.add(failed);
    if (failed) console.warn(`failed task: ${String(res.body).slice(0, 300)}`);
  } else {
    // Refused under overload (429/503 with a code) or a transport error (status 0).
    refused.add(1, { status: String(res.status) });
    const failed = res.status !== 429 && res.status !== 503;
    taskFailed.add(failed);
    if (failed) console.warn(`failed request: ${res.status} ${res.error} ${String(res.body).slice(0, 200)}`);
  }
}

export function impatient() {
  impatientSent.add(1);
  const res = http.post(
    `${target()}/process`,
    JSON.stringify({ tasks: [{ task_id: 1, concept: 'sun', intent: 'define', args: { n: seq } }] }),
    { headers: { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache' }, timeout: '100ms' },
  );
  if (res.status !== 0) impatientAnswered.add(1);
}

const HOSTILE = [
  ['application/json', '{"tasks": ['],
  ['application/json', '{"tasks": "lamp"}'],
  ['application/json', '{"tasks": []}'],
  ['application/json', '{"tasks": [{"task_id": 1, "concept": 7, "intent": "define"}]}'],
  ['application/json', '{"query": "x", "tasks": [{"task_id": 1, "concept": "a", "intent": "define"}]}'],
  ['application/json', `{"query": "${'a'.repeat(300 * 1024)}"}`],
  ['text/plain', 'What is a lightbulb?'],
  ['application/json', '\u0000\u0001\u0002'],
];

export function hostile() {
  const i = seq % HOSTILE.length;
  const [type, body] = HOSTILE[i];
  const res = http.post(`${target()}/process`, body, {
    headers: { 'Content-Type': type },
    timeout: '10s',
  });
  let code = null;
  try {
    code = res.json('code');
  } catch (e) {
    code = null;
  }
  if (res.status < 400 || res.status >= 500 || !code) {
    hostileWrong.add(1);
    console.warn(`hostile body ${i}: ${res.status} ${res.error} ${String(res.body).slice(0, 200)}`);
  }
}

export function handleSummary(data) {
  const m = (name) => (data.metrics[name] ? data.metrics[name].values : {});
  const summary = {
    main_requests: (m('task_failed').passes || 0) + (m('task_failed').fails || 0),
    main_failed_tasks: m('task_failed').passes || 0,
    main_refused: m('refused').count || 0,
    main_answered_ms: m('answered_ms'),
    impatient_requests: m('impatient_sent').count || 0,
    impatient_answered_in_time: m('impatient_answered_in_time').count || 0,
    hostile_wrong_answer: m('hostile_wrong_answer').count || 0,
    dropped_iterations: m('dropped_iterations').count || 0,
    http_reqs: m('http_reqs').count,
    peak_rate: PEAK,
  };
  return { [__ENV.SUMMARY || 'production-summary.json']: JSON.stringify(summary, null, 2) };
}
