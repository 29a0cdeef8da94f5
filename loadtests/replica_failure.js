// replica_failure.js: a constant arrival rate through a load balancer in front of several
// replicas, while the test stops some of them (tests/api/replicas.rs). It only counts; the
// test reads the load balancer's log to say which replica each failure was on.
//
//   URL         what to POST to (the load balancer's /process)
//   RATE        requests per second (default 200)
//   DURATION_S  run length (default 8)
//
// k6 run --summary-export out.json replica_failure.js
import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { steady } from './rate.js';

const URL = __ENV.URL || 'http://127.0.0.1:8080/process';
const RATE = parseInt(__ENV.RATE || '200');
const DURATION_S = parseInt(__ENV.DURATION_S || '8');
const PARAMS = { headers: { 'Content-Type': 'application/json' }, responseType: 'text', timeout: '10s' };
const failed = new Counter('failed_requests');

export const options = {
  scenarios: {
    steady: steady(RATE, DURATION_S, Math.max(20, Math.ceil(RATE / 10)), Math.max(100, RATE)),
  },
};

export default function () {
  const id = `${__VU}-${__ITER}`;
  const body = JSON.stringify({ tasks: [{ task_id: id, concept: 'lamp', intent: 'define' }] });
  const res = http.post(URL, body, PARAMS);
  const ok = check(res, {
    'answered with success': (r) => r.status === 200 && r.body.includes('"status":"success"'),
  });
  if (!ok) failed.add(1);
}
