// Mock Azure OpenAI Realtime members for t/37_realtime.t: each a WebSocket
// server on 127.0.0.1 at /openai/realtime?api-version=...&deployment=NAME
// and /openai/v1/realtime?model=NAME, as the service answers them:
//   - the handshake needs the member's api-key (header, or the api-key
//     query parameter, as browsers send it): 401 otherwise;
//   - a handshake can be answered 429 (Retry-After, retry-after-ms, Azure's
//     JSON error) or another status, N times, by POST /mock/control;
//   - a session says session.created; each response.create is answered
//     response.created, a few response.text.delta, response.done with
//     usage (input, output, total tokens);
//   - GET /mock/stats: handshakes, statuses, sessions open and done, the
//     last path, deployment and key state (never a key).
//   node member.mjs NAME:PORT:KEY [NAME:PORT:KEY ...]   prints "ready"
import http from 'node:http';
import { WebSocketServer } from 'ws';

function member(name, port, key) {
  const stats = { member: name, handshakes: 0, status: {}, sessions_open: 0, sessions_done: 0,
                  last_path: '', last_deployment: '', last_key: 'none', last_header_names: '' };
  let control = { handshake_status: 0, count: 0, retry_after_ms: 2000 };
  const wss = new WebSocketServer({ noServer: true });

  const json = (res, status, body, headers = {}) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://x');
    if (url.pathname === '/mock/stats') return json(res, 200, stats);
    if (url.pathname === '/mock/control') {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => { control = { ...control, ...JSON.parse(body || '{}') }; json(res, 200, { ok: true }); });
      return;
    }
    // Not a WebSocket handshake: what the service says to a plain GET.
    stats.status[400] = (stats.status[400] || 0) + 1;
    json(res, 400, { error: { code: 'BadRequest', message: 'Expected a WebSocket upgrade.' } });
  });

  server.on('upgrade', (req, socket, head) => {
    const url = new URL(req.url, 'http://x');
    const presented = req.headers['api-key'] || url.searchParams.get('api-key');
    stats.handshakes++;
    stats.last_path = url.pathname + url.search;
    stats.last_deployment = url.searchParams.get('deployment') || url.searchParams.get('model') || '';
    stats.last_key = !presented ? 'absent' : presented === key ? 'valid' : 'invalid';
    stats.last_header_names = Object.keys(req.headers).join(',');
    const refuse = (status, body, headers = {}) => {
      stats.status[status] = (stats.status[status] || 0) + 1;
      const text = JSON.stringify(body);
      socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\n`
                 + Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')
                 + `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`);
    };
    if (!/^\/openai\/(v1\/)?realtime$/.test(url.pathname)) return refuse(404, { error: { code: '404', message: 'Resource not found' } });
    if (stats.last_key !== 'valid') return refuse(401, { error: { code: '401', message: 'Access denied due to invalid subscription key or wrong API endpoint.' } });
    if (control.handshake_status && control.count !== 0) {
      const status = control.handshake_status;
      if (control.count > 0) control.count--;
      const ms = control.retry_after_ms;
      return refuse(status, { error: { code: String(status), message: `Please retry after ${Math.ceil(ms / 1000)} seconds.` } },
                    status === 429 ? { 'retry-after-ms': ms, 'retry-after': Math.ceil(ms / 1000) } : {});
    }
    wss.handleUpgrade(req, socket, head, (ws) => session(ws));
  });

  function session(ws) {
    stats.status[101] = (stats.status[101] || 0) + 1;
    stats.sessions_open++;
    const send = (event) => ws.send(JSON.stringify(event));
    send({ type: 'session.created', session: { id: `sess_${name}_${stats.handshakes}`, model: stats.last_deployment } });
    ws.on('message', (data) => {
      const event = JSON.parse(data.toString());
      if (event.type !== 'response.create') return;
      const id = `resp_${name}_${Date.now()}`;
      send({ type: 'response.created', response: { id, status: 'in_progress' } });
      for (const piece of ['Hello', ' from', ` ${name}`]) send({ type: 'response.text.delta', response_id: id, delta: piece });
      send({ type: 'response.done', response: { id, status: 'completed', usage: { total_tokens: 30, input_tokens: 10, output_tokens: 20 } } });
    });
    ws.on('close', () => { stats.sessions_open--; stats.sessions_done++; });
  }
  return new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
}

await Promise.all(process.argv.slice(2).map((spec) => {
  const [name, port, key] = spec.split(':');
  return member(name, Number(port), key);
}));
console.log('ready');
// Stopped by the test that started it, by PID; by itself after ten
// minutes at the latest.
setTimeout(() => process.exit(0), 600000);
