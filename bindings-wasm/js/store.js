// Where downloaded model files are kept: the Cache API (the default) or the Origin Private
// File System (`cache: 'opfs'`). A file is kept as chunks of CHUNK bytes, each written once
// it is complete, so an interrupted download keeps what it had and resumes from there with
// a Range request; neither medium can append to an entry in place.
//
// An index records each file ({ url, size, chunks, done }) and each model ({ model, files,
// bytes, done }), so models can be listed, sized and deleted one by one.

export const CHUNK = 32 << 20;

const FILES = 'yangtuo-files-v2';
const INDEX = 'yangtuo-index-v2';
const OLD = ['yangtuo-models-v1'];
// Cache API keys must be http(s) URLs; these never reach a network
const key = (kind, name) => `https://yangtuo.invalid/${kind}/${encodeURIComponent(name)}`;

async function sha256Hex(text) {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

class CacheApiStore {
  constructor(files, index) {
    this.files = files;
    this.index = index;
  }
  static async open() {
    if (typeof caches === 'undefined') return null;
    return new CacheApiStore(await caches.open(FILES), await caches.open(INDEX));
  }
  async getChunk(url, i) {
    const r = await this.files.match(key(`chunk/${i}`, url));
    return r ? r.body : null;
  }
  async putChunk(url, i, bytes) {
    await this.files.put(key(`chunk/${i}`, url), new Response(bytes));
  }
  async deleteChunks(url, n) {
    for (let i = 0; i < n; i++) await this.files.delete(key(`chunk/${i}`, url));
  }
  async get(name) {
    const r = await this.index.match(key('index', name));
    return r ? r.json() : undefined;
  }
  async put(name, value) {
    await this.index.put(key('index', name), new Response(JSON.stringify(value)));
  }
  async remove(name) {
    await this.index.delete(key('index', name));
  }
  async all(prefix) {
    const out = [];
    for (const req of await this.index.keys()) {
      const name = decodeURIComponent(req.url.split('/index/')[1] ?? '');
      if (name.startsWith(prefix)) out.push(await (await this.index.match(req)).json());
    }
    return out;
  }
}

class OpfsStore {
  constructor(dir) {
    this.dir = dir;
  }
  static async open() {
    if (!navigator.storage?.getDirectory) return null;
    const root = await navigator.storage.getDirectory();
    return new OpfsStore(await root.getDirectoryHandle('yangtuo', { create: true }));
  }
  async #read(name) {
    try {
      return await (await this.dir.getFileHandle(name)).getFile();
    } catch {
      return null;
    }
  }
  async #write(name, data) {
    const w = await (await this.dir.getFileHandle(name, { create: true })).createWritable();
    await w.write(data);
    await w.close();
  }
  async #delete(name) {
    await this.dir.removeEntry(name).catch(() => {});
  }
  async getChunk(url, i) {
    return (await this.#read(`${await sha256Hex(url)}.${i}`))?.stream() ?? null;
  }
  async putChunk(url, i, bytes) {
    await this.#write(`${await sha256Hex(url)}.${i}`, bytes);
  }
  async deleteChunks(url, n) {
    const h = await sha256Hex(url);
    for (let i = 0; i < n; i++) await this.#delete(`${h}.${i}`);
  }
  async get(name) {
    const f = await this.#read(`index-${await sha256Hex(name)}.json`);
    return f ? JSON.parse(await f.text()).value : undefined;
  }
  async put(name, value) {
    await this.#write(`index-${await sha256Hex(name)}.json`, JSON.stringify({ name, value }));
  }
  async remove(name) {
    await this.#delete(`index-${await sha256Hex(name)}.json`);
  }
  async all(prefix) {
    const out = [];
    for await (const [n, h] of this.dir.entries()) {
      if (!n.startsWith('index-')) continue;
      const { name, value } = JSON.parse(await (await h.getFile()).text());
      if (name.startsWith(prefix)) out.push(value);
    }
    return out;
  }
}

/** The store for a load's `cache` option: true or 'cache' (Cache API), 'opfs', or false. */
export async function openStore(cache) {
  if (cache === false || cache == null) return null;
  if (cache === 'opfs') return OpfsStore.open();
  if (cache === true || cache === 'cache') return CacheApiStore.open();
  const e = new Error(`invalid option \`cache\`: ${JSON.stringify(cache)} (true, false, 'cache' or 'opfs')`);
  e.code = 'INVALID_ARG';
  throw e;
}

/** The stored chunks `from..to` of `url`, one after another, as one stream. */
export function storedStream(store, url, from, to) {
  let i = from;
  let reader = null;
  return new ReadableStream({
    async pull(controller) {
      for (;;) {
        if (!reader) {
          if (i >= to) return controller.close();
          const body = await store.getChunk(url, i++);
          if (!body) return controller.error(new Error(`the cache lost part of ${url}; load it again`));
          reader = body.getReader();
        }
        const { done, value } = await reader.read();
        if (!done) return controller.enqueue(value);
        reader = null;
      }
    },
  });
}

/** How much the origin may still store, in bytes (Infinity when the browser does not say). */
export async function freeBytes() {
  const e = await navigator.storage?.estimate?.().catch(() => null);
  return e?.quota ? e.quota - (e.usage ?? 0) : Infinity;
}

/** Models kept by each store: [{ model, bytes, complete, files, cache }], the largest first. */
export async function listModels() {
  const out = [];
  for (const kind of ['cache', 'opfs']) {
    const store = await openStore(kind).catch(() => null);
    if (!store) continue;
    for (const m of await store.all('model:')) {
      const files = await Promise.all(m.files.map((u) => store.get(`file:${u}`)));
      const bytes = files.reduce((n, f) => n + (f ? (f.done ? f.size : Math.min(f.size, f.chunks * CHUNK)) : 0), 0);
      const complete = files.every((f) => f?.done);
      out.push({ model: m.model, bytes, complete, files: m.files, cache: kind });
    }
  }
  return out.sort((a, b) => b.bytes - a.bytes);
}

/** Delete one model's files and entry from every store; whether there was one. */
export async function deleteModel(model) {
  let found = false;
  for (const kind of ['cache', 'opfs']) {
    const store = await openStore(kind).catch(() => null);
    const m = await store?.get(`model:${model}`);
    if (!m) continue;
    found = true;
    // a file two models share (the same URL) stays while the other still lists it
    const others = (await store.all('model:')).filter((o) => o.model !== model).flatMap((o) => o.files);
    for (const url of m.files) {
      if (others.includes(url)) continue;
      const f = await store.get(`file:${url}`);
      if (f) await store.deleteChunks(url, Math.ceil(f.size / CHUNK));
      await store.remove(`file:${url}`);
    }
    await store.remove(`model:${model}`);
  }
  return found;
}

/** Forget every download, in both stores. */
export async function clearAll() {
  if (typeof caches !== 'undefined') for (const name of [FILES, INDEX, ...OLD]) await caches.delete(name);
  if (navigator.storage?.getDirectory) {
    const root = await navigator.storage.getDirectory();
    await root.removeEntry('yangtuo', { recursive: true }).catch(() => {});
  }
}
