// Opens N Realtime sessions one after another and closes each at its 101:
// prints one JSON line with the handshake times (ms, from the socket's
// creation to the 101) and how many each member took.
//   node bench/realtime-client.mjs URL API-KEY N
import { createRequire } from 'node:module';
import { performance } from 'node:perf_hooks';

const require = createRequire(new URL('../t/ws/package.json', import.meta.url));
const WebSocket = require('ws');
const [url, key, count] = process.argv.slice(2);

function handshake() {
  return new Promise((resolve, reject) => {
    const start = performance.now();
    const ws = new WebSocket(url, { headers: { 'api-key': key } });
    ws.on('upgrade', (res) => {
      const ms = performance.now() - start;
      ws.terminate();
      resolve({ ms, backend: res.headers['x-aoai-backend'] ?? '-' });
    });
    ws.on('unexpected-response', (req, res) => reject(new Error(`handshake: ${res.statusCode}`)));
    ws.on('error', reject);
  });
}

const times = [];
const backends = {};
const deadline = Date.now() + 120000;
for (let i = 0; i < Number(count) && Date.now() < deadline; i++) {
  const { ms, backend } = await handshake();
  times.push(ms);
  backends[backend] = (backends[backend] ?? 0) + 1;
}
times.sort((a, b) => a - b);
const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
console.log(JSON.stringify({ sessions: times.length, median_ms: at(0.5), p90_ms: at(0.9), backends }));
