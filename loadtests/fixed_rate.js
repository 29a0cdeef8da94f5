// fixed_rate.js: one target at a constant arrival rate, the way gateway overhead is
// published (gateway vs direct at fixed rates): latency at a rate both can carry, not
// throughput at saturation. scripts/bench.sh runs it direct and through the orchestrator.
//
//   URL         what to POST to (default http://127.0.0.1:5000/process)
//   BODY        the JSON body (default one define task for concept `bench`)
//   RATE        requests per second (default 1000)
//   DURATION_S  run length (default 10)
//
// k6 run --summary-trend-stats 'p(50),p(99),p(99.9)' --summary-export out.json fixed_rate.js
import http from 'k6/http';
import { check } from 'k6';
import { steady } from './rate.js';

const URL = __ENV.URL || 'http://127.0.0.1:5000/process';
const BODY = __ENV.BODY || '{"tasks":[{"task_id":1,"concept":"bench","intent":"define"}]}';
const RATE = parseInt(__ENV.RATE || '1000');
const DURATION_S = parseInt(__ENV.DURATION_S || '10');
// Bodies are read: an answer that is not a success is not a latency sample worth having.
const PARAMS = { headers: { 'Content-Type': 'application/json' }, responseType: 'text' };

export const options = {
  scenarios: {
    fixed: steady(RATE, DURATION_S, Math.max(20, Math.ceil(RATE / 20)), Math.max(100, RATE / 2)),
  },
  thresholds: {
    // The rate is the point: a run that could not hold it measured something else.
    dropped_iterations: ['count<' + Math.ceil(RATE * DURATION_S * 0.01)],
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
  },
};

export default function () {
  const res = http.post(URL, BODY, PARAMS);
  check(res, {
    'answered with success': (r) => r.status === 200 && r.body.includes('"status":"success"'),
  });
}
