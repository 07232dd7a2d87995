// A static file server for the demo and the browser tests. It counts requests per path, so
// a test can prove that a reload downloads nothing. Run directly: `node test/server.mjs
// [port]` serves this package at / and $YANGTUO_MODELS at /models/.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
};

/** Serve `mounts` ({ '/': dir, '/models/': dir }); resolves to { url, counts, close }. */
export function serve(mounts, port = 0) {
  const counts = new Map();
  const server = http.createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    counts.set(p, (counts.get(p) ?? 0) + 1);
    const prefix = Object.keys(mounts)
      .filter((m) => p.startsWith(m))
      .sort((a, b) => b.length - a.length)[0];
    const file = prefix && path.join(mounts[prefix], p.slice(prefix.length));
    if (!file || !file.startsWith(mounts[prefix]) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end('not found');
      return;
    }
    const size = fs.statSync(file).size;
    res.writeHead(200, {
      'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream',
      'content-length': size,
      'cache-control': 'no-store',
    });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        counts,
        close: () => new Promise((r) => server.close(r)),
      });
    });
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const mounts = { '/': root };
  if (process.env.YANGTUO_MODELS) mounts['/models/'] = path.resolve(process.env.YANGTUO_MODELS);
  const s = await serve(mounts, Number(process.argv[2] ?? 8080));
  console.log(`demo: ${s.url}/demo/index.html`);
}
