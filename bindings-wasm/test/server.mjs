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

/**
 * Serve `mounts` ({ '/': dir, '/models/': dir }); resolves to { url, counts, ranges, cut,
 * close }. `counts` counts requests per path and `ranges` lists the Range headers asked.
 * Files answer Range requests (206), as Hugging Face's CDN does. `cut(path, bytes)` makes
 * the next response for `path` stop after `bytes`, as a dropped connection does.
 *
 * `hub` ({ root, gated }) mimics the Hugging Face Hub under /hub/: `root/owner/name/…` is a
 * repo, listed at /hub/api/models/owner/name and served at
 * /hub/owner/name/resolve/main/<file>; repos named in `gated` answer 401.
 */
export function serve(mounts, port = 0, { hub } = {}) {
  const counts = new Map();
  const ranges = [];
  const cuts = new Map();
  const server = http.createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    counts.set(p, (counts.get(p) ?? 0) + 1);
    if (hub && p.startsWith('/hub/')) return serveHub(hub, p.slice('/hub/'.length), req, res);
    const prefix = Object.keys(mounts)
      .filter((m) => p.startsWith(m))
      .sort((a, b) => b.length - a.length)[0];
    const file = prefix && path.join(mounts[prefix], p.slice(prefix.length));
    if (!file || !file.startsWith(mounts[prefix])) return notFound(res);
    sendFile(file, p, req, res);
  });

  function sendFile(file, p, req, res) {
    if (!fs.existsSync(file) || fs.statSync(file).isDirectory()) return notFound(res);
    const size = fs.statSync(file).size;
    const headers = { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store', 'accept-ranges': 'bytes' };
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    if (req.headers.range) ranges.push({ path: p, range: req.headers.range });
    if (range && Number(range[1]) < size) {
      start = Number(range[1]);
      res.writeHead(206, { ...headers, 'content-length': size - start, 'content-range': `bytes ${start}-${size - 1}/${size}` });
    } else {
      res.writeHead(200, { ...headers, 'content-length': size });
    }
    const cut = cuts.get(p);
    if (cut === undefined) return fs.createReadStream(file, { start }).pipe(res);
    cuts.delete(p);
    // send `cut` bytes, then close the connection short of the Content-Length
    const part = fs.createReadStream(file, { start, end: start + cut - 1 });
    part.pipe(res, { end: false });
    part.on('end', () => res.write('', () => res.socket?.end()));
  }

  function serveHub({ root, gated = [] }, rest, req, res) {
    const listing = /^api\/models\/([^/]+\/[^/]+)$/.exec(rest);
    const file = /^([^/]+\/[^/]+)\/resolve\/main\/(.+)$/.exec(rest);
    const repoId = listing?.[1] ?? file?.[1];
    if (!repoId) return notFound(res);
    if (gated.includes(repoId)) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"Access to model is restricted."}');
      return;
    }
    const dir = path.join(root, repoId);
    if (!dir.startsWith(root) || !fs.existsSync(dir)) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"Repository not found"}');
      return;
    }
    if (listing) {
      const siblings = fs.readdirSync(dir).map((rfilename) => ({ rfilename }));
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: repoId, siblings }));
      return;
    }
    const target = path.join(dir, file[2]);
    if (!target.startsWith(dir)) return notFound(res);
    sendFile(target, `/hub/${rest}`, req, res);
  }

  return new Promise((resolve) => {
    server.listen(port, '127.0.0.1', () => {
      resolve({
        url: `http://127.0.0.1:${server.address().port}`,
        counts,
        ranges,
        cut: (p, bytes) => cuts.set(p, bytes),
        close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
      });
    });
  });
}

function notFound(res) {
  res.writeHead(404).end('not found');
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const mounts = { '/': root };
  if (process.env.YANGTUO_MODELS) mounts['/models/'] = path.resolve(process.env.YANGTUO_MODELS);
  const s = await serve(mounts, Number(process.argv[2] ?? 8080));
  console.log(`demo: ${s.url}/demo/index.html`);
}
