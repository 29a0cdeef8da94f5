// load.js: steady arrival rate (RATE req/s for DURATION); latency stays low, nothing fails.
import { query, batch, baseThresholds } from './lib.js';

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: 50,
      maxVUs: 400,
    },
  },
  thresholds: {
    ...baseThresholds,
    throttled: ['rate<0.01'],
    http_req_duration: ['p(95)<50', 'p(99)<150'],
    dropped_iterations: ['count<10'],
  },
};

export default function () {
  if (__ITER % 2 === 0) query(__ITER);
  else batch(__ITER);
}
