// Shared by every scenario: target, request bodies, and what "good" means.
import http from 'k6/http';
import { check } from 'k6';
import { Rate, Counter } from 'k6/metrics';

export const BASE_URL = __ENV.BASE_URL || 'http://localhost:5000';
const HEADERS = { 'Content-Type': 'application/json' };

// 429 (rate limited) and 503 (overloaded/not ready) are deliberate answers, not failures:
// they do not count in http_req_failed, and are tracked here instead.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 299 }, 404, 429, 503));
export const throttled = new Rate('throttled');
export const taskErrors = new Rate('task_errors');
export const shed = new Counter('shed_requests');

const QUERIES = [
  'What is a lightbulb?',
  'How does a lightbulb work?',
  'What is the impact of the lightbulb?',
  'Define factories',
  'history of the lightbulb',
];

export function query(i) {
  const body = JSON.stringify({ query: QUERIES[i % QUERIES.length], user_id: `k6-${__VU}` });
  return send('/process', body, 'query');
}

export function batch(i) {
  const body = JSON.stringify({
    tasks: [
      { task_id: 1, concept: 'lightbulb', intent: 'define', args: { i: i % 50 } },
      { task_id: 2, concept: 'lightbulb', intent: 'function', args: { i: i % 50 } },
    ],
  });
  return send('/process', body, 'batch');
}

export function discover() {
  return send('/discover', JSON.stringify({ concept: 'lightbulb', intent: 'define' }), 'discover');
}

function send(path, body, name) {
  const res = http.post(`${BASE_URL}${path}`, body, { headers: HEADERS, tags: { name } });
  const limited = res.status === 429 || res.status === 503;
  throttled.add(limited);
  if (limited) {
    shed.add(1);
    check(res, { 'shed load says why (Retry-After or JSON code)': (r) => !!(r.headers['Retry-After'] || r.json('code')) });
    return res;
  }
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'body has a status': (r) => r.status !== 200 || ['success', 'partial', 'failed'].includes(r.json('status')) || r.json('status') === 'success',
  });
  if (res.status === 200 && path === '/process') {
    taskErrors.add(res.json('status') !== 'success');
  }
  return ok;
}

export function health() {
  const res = http.get(`${BASE_URL}/health`, { tags: { name: 'health' } });
  check(res, { 'healthy': (r) => r.status === 200 && r.json('status') === 'healthy' });
}

// Per-scenario thresholds share these: no unexpected failures, tasks succeed.
export const baseThresholds = {
  http_req_failed: ['rate<0.01'],
  checks: ['rate>0.99'],
  task_errors: ['rate<0.01'],
};
