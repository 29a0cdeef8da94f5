// live_ws.js: WebSocket clients on /ws, each running batches one after another for the
// duration: time to the first `task` message and to `done`, per batch.
//
//   BASE_URL    orchestrator (default http://127.0.0.1:5000)
//   CLIENTS     concurrent sockets (default 500)
//   DURATION_S  run length (default 20)
import ws from 'k6/ws';
import { check } from 'k6';
import { Trend, Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:5000').replace(/^http/, 'ws');
const CLIENTS = parseInt(__ENV.CLIENTS || '500');
const DURATION_S = parseInt(__ENV.DURATION_S || '20');
const firstEvent = new Trend('ws_first_event', true);
const batchDone = new Trend('ws_batch_done', true);
const batches = new Counter('ws_batches');
const errors = new Counter('ws_errors');

export const options = {
  scenarios: {
    sockets: { executor: 'constant-vus', vus: CLIENTS, duration: `${DURATION_S}s`, gracefulStop: '5s' },
  },
  thresholds: { ws_errors: ['count==0'] },
};

const TASKS = [
  { task_id: 1, concept: 'lightbulb', intent: 'define' },
  { task_id: 2, concept: 'lightbulb', intent: 'function' },
];

export default function () {
  const res = ws.connect(`${BASE_URL}/ws`, {}, (socket) => {
    let n = 0;
    let started = 0;
    let seenFirst = false;
    const send = () => {
      n += 1;
      started = Date.now();
      seenFirst = false;
      socket.send(JSON.stringify({ type: 'process', id: n, tasks: TASKS }));
    };
    socket.on('open', send);
    socket.on('message', (raw) => {
      const m = JSON.parse(raw);
      if (m.type === 'task' && !seenFirst) {
        seenFirst = true;
        firstEvent.add(Date.now() - started);
      } else if (m.type === 'done') {
        batchDone.add(Date.now() - started);
        batches.add(1);
        send();
      } else if (m.type === 'error') {
        errors.add(1);
      }
    });
    socket.setTimeout(() => socket.close(), DURATION_S * 1000);
  });
  check(res, { 'upgraded (101)': (r) => r && r.status === 101 });
}
