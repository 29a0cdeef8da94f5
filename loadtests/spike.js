// spike.js: a quiet baseline, a sudden 10x spike, back to quiet. Good = no failures during
// the spike (shed load is 429/503 with Retry-After), and latency recovers after it.
import { query, baseThresholds } from './lib.js';

const BASE = Number(__ENV.BASE_RATE || 100);

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-arrival-rate',
      startRate: BASE,
      timeUnit: '1s',
      preAllocatedVUs: 100,
      maxVUs: 1000,
      stages: [
        { target: BASE, duration: '20s' },
        { target: BASE * 10, duration: '5s' },
        { target: BASE * 10, duration: '20s' },
        { target: BASE, duration: '5s' },
        { target: BASE, duration: '20s' },
      ],
    },
  },
  thresholds: {
    ...baseThresholds,
    http_req_duration: ['p(95)<250', 'p(99)<1000'],
  },
};

export default function () {
  query(__ITER);
}
