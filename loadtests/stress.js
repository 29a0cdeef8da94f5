// stress.js: ramp the arrival rate until the gateway saturates. Good = it degrades
// gracefully: latency rises and deliberate 429/503 appear, but no 5xx errors and no
// failed tasks among answered requests.
import { query, batch, baseThresholds } from './lib.js';

const PEAK = Number(__ENV.PEAK || 5000);

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      startRate: 100,
      timeUnit: '1s',
      preAllocatedVUs: 100,
      maxVUs: Number(__ENV.MAX_VUS || 1000),
      stages: [
        { target: PEAK / 4, duration: __ENV.STAGE || '30s' },
        { target: PEAK / 2, duration: __ENV.STAGE || '30s' },
        { target: PEAK, duration: __ENV.STAGE || '30s' },
        { target: 0, duration: '10s' },
      ],
    },
  },
  thresholds: {
    ...baseThresholds,
    http_req_duration: ['p(95)<500', 'p(99)<2000'],
  },
};

export default function () {
  if (__ITER % 2 === 0) query(__ITER);
  else batch(__ITER);
}
