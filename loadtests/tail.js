// tail.js: one-task requests at a constant arrival rate, for the tail and overload runs
// (loadtests/run-tail.sh). Besides k6's own figures it keeps:
//   served_ms   latency of the requests whose task an agent answered
//   shed        requests answered 503 (a low priority request shed under overload)
//   unserved    requests answered 200 whose task failed (refused for capacity, timed out)
//
//   URL         what to POST to (default http://127.0.0.1:5000/process)
//   RATE        requests per second (default 200)
//   DURATION_S  run length (default 20)
//   PRIORITY    the X-Priority header (none by default)
//   INTENT      the task's intent (default define)
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { steady } from './rate.js';

const URL = __ENV.URL || 'http://127.0.0.1:5000/process';
const RATE = parseInt(__ENV.RATE || '200');
const DURATION_S = parseInt(__ENV.DURATION_S || '20');
const INTENT = __ENV.INTENT || 'define';
const headers = { 'Content-Type': 'application/json' };
if (__ENV.PRIORITY) headers['X-Priority'] = __ENV.PRIORITY;
const PARAMS = { headers, responseType: 'text' };

const served = new Trend('served_ms', true);
const shed = new Counter('shed');
const unserved = new Counter('unserved');

export const options = {
  scenarios: { tail: steady(RATE, DURATION_S, Math.max(20, Math.ceil(RATE / 10)), Math.max(200, RATE)) },
  summaryTrendStats: ['p(50)', 'p(99)', 'p(99.9)', 'max'],
};

let n = 0;
export default function () {
  n += 1;
  const body = JSON.stringify({ tasks: [{ task_id: `${__VU}-${n}`, concept: 'bench', intent: INTENT }] });
  const res = http.post(URL, body, PARAMS);
  if (res.status === 503) {
    shed.add(1);
  } else if (res.status === 200 && res.body.includes('"status":"success"')) {
    served.add(res.timings.duration);
  } else {
    unserved.add(1);
  }
}
