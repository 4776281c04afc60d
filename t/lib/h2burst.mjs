// HTTP/2 bursts for the tests: ROUNDS rounds of STREAMS concurrent POSTs
// multiplexed on one h2c connection (prior knowledge), the body read from
// a file.  Prints one JSON line: {"statuses": {"200": n, ...},
// "backends": {"farm0": n, ...}}.  Node's own http2 module: no package.
//   node h2burst.mjs URL PATH BODY_FILE STREAMS ROUNDS PAUSE_MS
import http2 from 'node:http2';
import fs from 'node:fs';

const [url, path, bodyFile, streams, rounds, pauseMs] = process.argv.slice(2);
const body = fs.readFileSync(bodyFile);
const statuses = {}, backends = {};
const session = http2.connect(url);
session.on('error', (e) => { console.error(e.message); process.exit(2); });
setTimeout(() => { console.error('h2burst: timed out'); process.exit(3); }, 60000).unref();

function one() {
    return new Promise((resolve) => {
        const req = session.request({ ':method': 'POST', ':path': path,
                                      'content-type': 'application/json',
                                      'content-length': body.length });
        let status = 0, backend = '-';
        req.on('response', (h) => { status = h[':status']; backend = h['x-aoai-backend'] || '-'; });
        req.on('data', () => {});
        req.on('end', () => { statuses[status] = (statuses[status] || 0) + 1;
                              backends[backend] = (backends[backend] || 0) + 1; resolve(); });
        req.on('error', () => { statuses.error = (statuses.error || 0) + 1; resolve(); });
        req.end(body);
    });
}
for (let round = 0; round < Number(rounds); round++) {
    await Promise.all(Array.from({ length: Number(streams) }, one));
    await new Promise((r) => setTimeout(r, Number(pauseMs)));
}
session.close();
console.log(JSON.stringify({ statuses, backends }));
