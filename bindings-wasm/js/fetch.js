// What a load streams: a model given as a URL (a .gguf file or a Hugging Face folder), as
// a Hugging Face repo id (`owner/name:QUANT`), or as File objects, resolved into files of
// { name, size, stream() }. Downloads go through a store (store.js) chunk by chunk, so a
// reload reads the store and an interrupted download resumes.
import { chooseRepoFiles, hubHttpError, parseRepoId } from '../pkg/yangtuo_wasm.js';
import { fail } from './calls.js';
import { CHUNK, freeBytes, storedStream } from './store.js';

export const HF_ENDPOINT = 'https://huggingface.co';

const mib = (n) => (n / 2 ** 20).toFixed(1);

async function request(url, headers = {}) {
  try {
    return await fetch(url, { headers });
  } catch (e) {
    throw fail(`could not fetch ${url}: ${e.message}`);
  }
}

/** `a` then `b`, as one stream. */
function concat(a, b) {
  const readers = [a.getReader(), b.getReader()];
  return new ReadableStream({
    async pull(controller) {
      while (readers.length) {
        const { done, value } = await readers[0].read();
        if (!done) return controller.enqueue(value);
        readers.shift();
      }
      controller.close();
    },
    cancel: (why) => Promise.all(readers.map((r) => r.cancel(why))),
  });
}

/**
 * `body` passed through unchanged while each complete chunk of it is written to `store`
 * (record `rec`, whose first `rec.chunks` chunks are there already). A chunk is written
 * before more bytes pass, so memory holds one chunk. A full store stops the saving, not
 * the load.
 */
function saving(body, store, rec) {
  const reader = body.getReader();
  let chunk = null;
  let fill = 0;
  let saving = true;
  const flush = async () => {
    if (!saving || !fill) return;
    try {
      await store.putChunk(rec.url, rec.chunks, chunk.subarray(0, fill));
      rec.chunks += 1;
      rec.done = rec.chunks * CHUNK >= rec.size;
      await store.put(`file:${rec.url}`, rec);
    } catch (e) {
      saving = false;
      const why = e?.name === 'QuotaExceededError' ? `the origin's storage quota is full: it needs ${mib(rec.size - rec.chunks * CHUNK)} MiB more for this file` : String(e);
      console.warn(`yangtuo: not cached: ${rec.url}: ${why}; delete models with deleteCachedModel(), or try { cache: 'opfs' }`);
      await store.deleteChunks(rec.url, rec.chunks).catch(() => {});
      await store.remove(`file:${rec.url}`).catch(() => {});
    }
    fill = 0;
  };
  return new ReadableStream({
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) {
        await flush();
        return controller.close();
      }
      for (let at = 0; saving && at < value.length; ) {
        chunk ??= new Uint8Array(Math.max(0, Math.min(CHUNK, rec.size - rec.chunks * CHUNK)));
        if (!chunk.length) {
          saving = false; // more bytes than the server announced: keep none of them
          break;
        }
        const n = Math.min(value.length - at, chunk.length - fill);
        chunk.set(value.subarray(at, at + n), fill);
        fill += n;
        at += n;
        if (fill === chunk.length) {
          await flush();
          chunk = null;
        }
      }
      controller.enqueue(value);
    },
    cancel: (why) => reader.cancel(why),
  });
}

/**
 * One file to stream, { name, size, stream() }: from `store` when it holds the whole file;
 * else from the network, asking with a Range request for what the store lacks, and storing
 * that as it streams. `optional` turns a 404 into null; `httpError(status)` names a failure.
 */
export async function openFile(url, { store, optional = false, httpError } = {}) {
  const name = decodeURIComponent(new URL(url).pathname.split('/').pop());
  let rec = store ? await store.get(`file:${url}`) : undefined;
  if (rec?.done) return { name, size: rec.size, stream: () => storedStream(store, url, 0, rec.chunks) };
  const have = rec?.chunks ?? 0;
  const resp = await request(url, have ? { Range: `bytes=${have * CHUNK}-` } : {});
  if (resp.status === 404 && optional) return null;
  if (!resp.ok) throw httpError?.(resp.status) ?? fail(`could not fetch ${url}: HTTP ${resp.status} ${resp.statusText}`);
  const resumed = resp.status === 206;
  const size = resumed
    ? Number(/\/(\d+)\s*$/.exec(resp.headers.get('content-range') ?? '')?.[1])
    : Number(resp.headers.get('content-length'));
  if (!Number.isFinite(size) || size <= 0) throw fail(`${name}: the server sent no Content-Length`);
  if (!store) return { name, size, stream: () => resp.body };
  if (!resumed || rec.size !== size) {
    // a first download, a server that ignores Range, or a file that changed: from the start
    if (resumed) {
      await resp.body.cancel();
      await store.deleteChunks(url, have);
      await store.remove(`file:${url}`);
      return openFile(url, { store, optional, httpError });
    }
    if (have) await store.deleteChunks(url, have);
    rec = { url, size, chunks: 0, done: false };
  }
  const free = await freeBytes();
  if (free < size - rec.chunks * CHUNK) {
    console.warn(`yangtuo: not cached: ${name} needs ${mib(size - rec.chunks * CHUNK)} MiB and this origin may store ${mib(free)} MiB more; delete models with deleteCachedModel(), or try { cache: 'opfs' }`);
    return { name, size, stream: () => concat(storedStream(store, url, 0, rec.chunks), resp.body) };
  }
  await store.put(`file:${url}`, rec);
  const from = rec.chunks;
  return { name, size, stream: () => concat(storedStream(store, url, 0, from), saving(resp.body, store, rec)) };
}

async function readAll(file) {
  if (!file) return undefined;
  return new Uint8Array(await new Response(file.stream()).arrayBuffer());
}
const text = async (file) => (file ? new TextDecoder().decode(await readAll(file)) : undefined);

/**
 * A Hugging Face folder's files: `at(name)` is a file's URL; `listed` holds the repo's
 * paths, or is null for a plain folder URL, whose optional files are probed (404 is fine).
 */
async function folder(at, listed, { store, httpError }) {
  const urls = [];
  const get = async (n, optional = true) => {
    if (listed && !listed.includes(n)) return null;
    const f = await openFile(at(n), { store, optional, httpError: httpError?.(n) });
    if (f) urls.push(at(n));
    return f;
  };
  const config = await text(await get('config.json', false));
  const tokenizer = (await readAll(await get('tokenizer.model'))) ?? (await readAll(await get('tokenizer.json')));
  const tokenizerConfig = await text(await get('tokenizer_config.json'));
  const index = await get('model.safetensors.index.json');
  const single = listed ? listed.filter((p) => !p.includes('/') && p.endsWith('.safetensors')).sort() : ['model.safetensors'];
  const names = index ? [...new Set(Object.values(JSON.parse(await text(index)).weight_map))].sort() : single;
  urls.push(...names.map(at));
  // the shards open one after another, when it is their turn to stream
  const weights = names.map((n) => ({ name: n, open: () => openFile(at(n), { store, httpError: httpError?.(n) }) }));
  return { config, tokenizer, tokenizerConfig, weights, urls };
}

/** A repo id on the hub (or a mirror): list it, then fetch what core chooses. */
async function fromHub(spec, repo, { store, endpoint }) {
  const base = endpoint.replace(/\/+$/, '');
  const known = store && (await store.get(`model:${spec}`));
  let paths;
  if (known?.paths) {
    paths = known.paths; // loaded before: no listing, so it loads offline too
  } else {
    const resp = await request(`${base}/api/models/${repo}`);
    if (!resp.ok) throw hubHttpError(spec, undefined, resp.status, base);
    paths = ((await resp.json()).siblings ?? []).map((s) => s.rfilename);
  }
  const choice = chooseRepoFiles(spec, paths);
  const at = (f) => `${base}/${choice.repo}/resolve/main/${f.split('/').map(encodeURIComponent).join('/')}`;
  const httpError = (f) => (status) => hubHttpError(spec, f, status, base);
  if (choice.gguf) {
    const url = at(choice.gguf);
    return { weights: [{ name: choice.gguf, open: () => openFile(url, { store, httpError: httpError(choice.gguf) }) }], urls: [url], paths };
  }
  return { ...(await folder(at, paths, { store, httpError })), paths };
}

/**
 * Resolve `model` (a URL to a .gguf or a folder, a repo id, or File objects) into what to
 * stream: { config?, tokenizer?, tokenizerConfig?, weights: [file | { open }], key?, urls?,
 * paths? }. `key` names the model in the store's index; `urls` are its files.
 */
export async function resolve(model, { store, endpoint = HF_ENDPOINT }) {
  const files = typeof FileList !== 'undefined' && model instanceof FileList ? [...model] : Array.isArray(model) ? model : null;
  if (files) {
    const byName = (n) => files.find((f) => f.name === n);
    const gguf = files.find((f) => f.name.toLowerCase().endsWith('.gguf'));
    if (gguf) return { weights: [gguf] };
    const config = byName('config.json');
    if (!config) throw fail('choose a .gguf file, or a folder\'s config.json, *.safetensors and tokenizer.model');
    const tok = byName('tokenizer.model') ?? byName('tokenizer.json');
    return {
      config: await config.text(),
      tokenizer: tok && new Uint8Array(await tok.arrayBuffer()),
      tokenizerConfig: await byName('tokenizer_config.json')?.text(),
      weights: files.filter((f) => f.name.endsWith('.safetensors')).sort((a, b) => a.name.localeCompare(b.name)),
    };
  }
  if (typeof model !== 'string' || !model) throw fail('`model` must be a URL, a Hugging Face repo id or File objects', 'INVALID_ARG');
  const id = parseRepoId(model);
  if (id) return { ...(await fromHub(model, id.repo, { store, endpoint })), key: model };
  const url = new URL(model, location.href).href;
  if (/\.gguf($|\?)/i.test(url)) return { weights: [await openFile(url, { store })], urls: [url], key: url };
  const base = url.endsWith('/') ? url : `${url}/`;
  return { ...(await folder((n) => `${base}${n}`, null, { store })), key: base };
}
