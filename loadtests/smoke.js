// smoke.js: a few VUs for a few seconds; every endpoint answers correctly and fast.
import { sleep } from 'k6';
import { query, batch, discover, health, baseThresholds } from './lib.js';

export const options = {
  vus: Number(__ENV.VUS || 2),
  duration: __ENV.DURATION || '5s',
  thresholds: {
    ...baseThresholds,
    throttled: ['rate==0'],
    'http_req_duration{name:health}': ['p(95)<20', 'p(99)<50'],
    'http_req_duration{name:query}': ['p(95)<100', 'p(99)<250'],
    'http_req_duration{name:batch}': ['p(95)<100', 'p(99)<250'],
  },
};

export default function () {
  const i = __ITER;
  health();
  query(i);
  batch(i);
  discover();
  sleep(0.05);
}
