// A Realtime client for t/37_realtime.t, with ws as browsers' and SDKs'
// WebSocket: opens a session through the gateway, asks for one response,
// and prints one JSON line: the handshake's status and x-aoai-backend, the
// events it got, the usage of response.done; or the refused handshake's
// status, Retry-After and body.
//   node client.mjs URL [api-key [pause-ms]]   (key '-': none as a header;
//   pause-ms: how long the session idles before it asks for a response)
import WebSocket from 'ws';

const [url, key, pause] = process.argv.slice(2);
const headers = key && key !== '-' ? { 'api-key': key } : {};
const ws = new WebSocket(url, { headers });
const result = { events: [] };
const done = (extra) => { console.log(JSON.stringify({ ...result, ...extra })); process.exit(0); };
setTimeout(() => done({ error: 'timed out' }), 20000).unref();

ws.on('upgrade', (res) => {
  result.status = res.statusCode;
  result.backend = res.headers['x-aoai-backend'] ?? null;
});
ws.on('unexpected-response', (req, res) => {
  let body = '';
  res.on('data', (d) => { body += d; });
  res.on('end', () => done({ status: res.statusCode, backend: res.headers['x-aoai-backend'] ?? null,
                             retry_after: res.headers['retry-after'] ?? null, body }));
});
ws.on('error', (error) => done({ error: String(error) }));
ws.on('message', (data) => {
  const event = JSON.parse(data.toString());
  result.events.push(event.type);
  if (event.type === 'session.created') {
    setTimeout(() => ws.send(JSON.stringify({ type: 'response.create' })), Number(pause || 0));
  }
  if (event.type === 'response.done') {
    result.usage = event.response.usage;
    ws.close();
  }
});
ws.on('close', () => done({}));
