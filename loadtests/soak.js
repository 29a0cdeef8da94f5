// soak.js: moderate steady load for a long time (default 10 min). Good = latency does not
// drift and nothing fails; watch RSS alongside (see README) — it must stay flat.
import { query, batch, discover, baseThresholds } from './lib.js';

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 300),
      timeUnit: '1s',
      duration: __ENV.DURATION || '10m',
      preAllocatedVUs: 50,
      maxVUs: 300,
    },
  },
  thresholds: {
    ...baseThresholds,
    throttled: ['rate<0.01'],
    http_req_duration: ['p(95)<50', 'p(99)<150'],
  },
};

export default function () {
  const i = __ITER;
  if (i % 3 === 0) query(i);
  else if (i % 3 === 1) batch(i);
  else discover();
}
