// tail.js: one-task requests at a constant arrival rate, for the tail and overload runs
// (loadtests/run-tail.sh). Besides k6's own figures it keeps:
//   served_ms   latency of the requests whose task an agent answered
//   shed        requests answered 503 (a low priority request shed under overload)
//   unserved    requests answered 200 whose task failed (refused for capacity, timed out)
//   shed_unexplained  503s without `Retry-After` or without the `overloaded` code
//
//   URL         what to POST to (default http://127.0.0.1:5000/process)
//   RATE        requests per second (default 200)
//   DURATION_S  run length (default 20)
//   PRIORITY    the X-Priority header (none by default)
//   BODY_PRIORITY  the body's `priority` field (none by default)
//   INTENT      the task's intent (default define)
//   CONCEPT     the task's concept (default bench)
//   TASK_PREFIX prefix of every task id (default none)
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { steady } from './rate.js';

const URL = __ENV.URL || 'http://127.0.0.1:5000/process';
const RATE = parseInt(__ENV.RATE || '200');
const DURATION_S = parseInt(__ENV.DURATION_S || '20');
const INTENT = __ENV.INTENT || 'define';
const CONCEPT = __ENV.CONCEPT || 'bench';
const BODY_PRIORITY = __ENV.BODY_PRIORITY || '';
const TASK_PREFIX = __ENV.TASK_PREFIX || '';
const headers = { 'Content-Type': 'application/json' };
if (__ENV.PRIORITY) headers['X-Priority'] = __ENV.PRIORITY;
const PARAMS = { headers, responseType: 'text' };

const served = new Trend('served_ms', true);
const shed = new Counter('shed');
const unserved = new Counter('unserved');
const unexplained = new Counter('shed_unexplained');

export const options = {
  scenarios: { tail: steady(RATE, DURATION_S, Math.max(20, Math.ceil(RATE / 10)), Math.max(200, RATE)) },
  summaryTrendStats: ['p(50)', 'p(99)', 'p(99.9)', 'max'],
};

let n = 0;
export default function () {
  n += 1;
  const request = { tasks: [{ task_id: `${TASK_PREFIX}${__VU}-${n}`, concept: CONCEPT, intent: INTENT }] };
  if (BODY_PRIORITY) request.priority = BODY_PRIORITY;
  const res = http.post(URL, JSON.stringify(request), PARAMS);
  if (res.status === 503) {
    shed.add(1);
    if (res.headers['Retry-After'] !== '1' || !res.body.includes('"overloaded"')) unexplained.add(1);
  } else if (res.status === 200 && res.body.includes('"status":"success"')) {
    served.add(res.timings.duration);
  } else {
    unserved.add(1);
  }
}
