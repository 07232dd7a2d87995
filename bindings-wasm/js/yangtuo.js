// yangtuo in the browser: an ES module over the wasm engine, close to WebLLM's API.
//
//   const llm = await Llama.load({ model: '/models/llama-2-7b-chat.Q4_0.gguf', onProgress });
//   const { content } = await llm.chat([{ role: 'user', content: '咖啡的作用是什么？' }]);
//   for await (const d of llm.chatStream(messages, { signal })) render(d);
//
// Files are fetched as streams (and kept in the Cache API, so a reload downloads nothing);
// each tensor goes to a WebGPU buffer as soon as its bytes are in, so a 4 GB model never
// sits whole in wasm memory.
import init, { WasmLoader, CancelToken } from '../pkg/yangtuo_wasm.js';

const CACHE = 'yangtuo-models-v1';
let booted;
const boot = () => (booted ??= init());

function fail(message, code = 'MODEL_LOAD') {
  const e = new Error(message);
  e.code = code;
  return e;
}

function abortError() {
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  e.code = 'ABORTED';
  return e;
}

/**
 * A Response for `url`, from the cache when present; `optional` turns a 404 into null. The
 * cache write finishes only after the body has been read: its promise goes into `pending`,
 * which `Llama.load` awaits, so that a reload right after a load finds everything cached.
 */
async function get(url, { cache, optional = false, pending }) {
  const store = cache && typeof caches !== 'undefined' ? await caches.open(CACHE) : null;
  const hit = store && (await store.match(url));
  if (hit) return hit;
  let resp;
  try {
    resp = await fetch(url);
  } catch (e) {
    throw fail(`could not fetch ${url}: ${e.message}`);
  }
  if (resp.status === 404 && optional) return null;
  if (!resp.ok) throw fail(`could not fetch ${url}: HTTP ${resp.status} ${resp.statusText}`);
  // keep a copy: the cache reads one branch of the stream while we read the other
  if (store) pending?.push(store.put(url, resp.clone()).catch((e) => console.warn(`yangtuo: not cached: ${url}: ${e}`)));
  return resp;
}

/** A file to stream: { name, size, stream() }. */
function fromResponse(name, resp) {
  const size = Number(resp.headers.get('content-length'));
  if (!Number.isFinite(size) || size <= 0) throw fail(`${name}: the server sent no Content-Length`);
  return { name, size, stream: () => resp.body };
}

// Progress is reported at least this often: a stream (a cached response, a local file) may
// hand over many megabytes in one chunk.
const PROGRESS_STEP = 256 * 1024;

async function streamInto(loader, file, progress) {
  loader.beginFile(file.name, file.size);
  const reader = file.stream().getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    for (let at = 0; at < value.length; at += PROGRESS_STEP) {
      const part = value.subarray(at, at + PROGRESS_STEP);
      loader.push(part);
      progress(part.length, file.name, loader.tensor);
    }
  }
  loader.endFile();
}

const text = async (r) => (r ? r.text() : undefined);
const bytes = async (r) => (r ? new Uint8Array(await r.arrayBuffer()) : undefined);

/** Resolve `model` (a URL to a .gguf or a folder, or File objects) into what to stream. */
async function resolve(model, cache, pending) {
  const files = model instanceof FileList ? [...model] : Array.isArray(model) ? model : null;
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
  if (typeof model !== 'string' || !model) throw fail('`model` must be a URL or File objects', 'INVALID_ARG');
  const url = new URL(model, location.href).href;
  if (/\.gguf($|\?)/i.test(url)) {
    return { weights: [fromResponse(url.split('/').pop(), await get(url, { cache, pending }))] };
  }
  const base = url.endsWith('/') ? url : `${url}/`;
  const config = await text(await get(`${base}config.json`, { cache, pending }));
  const tokenizer =
    (await bytes(await get(`${base}tokenizer.model`, { cache, optional: true, pending }))) ??
    (await bytes(await get(`${base}tokenizer.json`, { cache, optional: true, pending })));
  const tokenizerConfig = await text(await get(`${base}tokenizer_config.json`, { cache, optional: true, pending }));
  const index = await get(`${base}model.safetensors.index.json`, { cache, optional: true, pending });
  const names = index
    ? [...new Set(Object.values((await index.json()).weight_map))].sort()
    : ['model.safetensors'];
  // open the shards one after another, when it is their turn to stream
  const weights = names.map((n) => ({
    name: n,
    open: async () => fromResponse(n, await get(`${base}${n}`, { cache, pending })),
  }));
  return { config, tokenizer, tokenizerConfig, weights };
}

export class Llama {
  #inner;
  constructor(inner) {
    this.#inner = inner;
    // `llm.chat(messages)` stays the short form; `llm.chat.completions.create(request)` is
    // WebLLM's (and the `openai` package's) call, returning OpenAI's objects.
    const chat = (messages, opts) => this.#chat(messages, opts);
    chat.completions = { create: (request) => openai(this.#inner, 'chat', request) };
    Object.defineProperty(this, 'chat', { value: chat });
    /** `llm.completions.create({ prompt, ... })`: OpenAI's raw text completion. */
    this.completions = { create: (request) => openai(this.#inner, 'text', request) };
  }

  /**
   * @param {{ model: string | FileList | File[], onProgress?: (p: {loaded: number, total: number,
   *   file: string, tensor: string}) => void, template?: string, nCtx?: number, cache?: boolean }} o
   */
  static async load({ model, onProgress, template, nCtx, cache = true } = {}) {
    await boot();
    const pending = [];
    const src = await resolve(model, cache, pending);
    const loader = await WasmLoader.create(src.config);
    let loaded = 0;
    const sizes = src.weights.map((w) => w.size ?? 0);
    let total = sizes.reduce((a, b) => a + b, 0);
    for (const w of src.weights) {
      const file = w.open ? await w.open() : w;
      if (!w.size) total += file.size;
      await streamInto(loader, file, (n, name, tensor) => {
        loaded += n;
        onProgress?.({ loaded, total, file: name, tensor });
      });
    }
    await Promise.all(pending);
    return new Llama(await loader.finish(src.tokenizer, src.tokenizerConfig, template, nCtx));
  }

  get device() {
    return this.#inner.device;
  }
  get nCtx() {
    return this.#inner.nCtx;
  }
  get template() {
    return this.#inner.template;
  }
  tokenize(text) {
    return Array.from(this.#inner.tokenize(text));
  }
  detokenize(ids) {
    return this.#inner.detokenize(Uint32Array.from(ids));
  }

  /** Resolves to { content, finishReason, usage: { promptTokens, completionTokens, totalTokens } }. */
  #chat(messages, opts = {}) {
    return run((o, d, t) => this.#inner.chat(messages, o, d, t), opts);
  }

  /** Yields text deltas; they concatenate to what `chat` returns for the same seed. */
  chatStream(messages, opts = {}) {
    return stream((o, d, t) => this.#inner.chat(messages, o, d, t), opts);
  }

  /** A multi-turn conversation that keeps its KV cache. */
  session({ system } = {}) {
    return new Session(this.#inner.session(system));
  }
}

class Session {
  #inner;
  constructor(inner) {
    this.#inner = inner;
  }
  get messages() {
    return this.#inner.messages;
  }
  reset() {
    this.#inner.reset();
  }
  chat(text, opts = {}) {
    return run((o, d, t) => this.#inner.chat(text, o, d, t), opts);
  }
  chatStream(text, opts = {}) {
    return stream((o, d, t) => this.#inner.chat(text, o, d, t), opts);
  }
}

/**
 * One OpenAI-shaped request (`kind` 'chat' or 'text') to the answer object, or with
 * `stream: true` to an async iterator of chunk objects. The request goes to the engine as
 * JSON and is checked there; `signal` is the only field read here.
 */
function openai(inner, kind, request) {
  if (request == null || typeof request !== 'object') throw new TypeError('invalid argument `request`: must be an object');
  const { signal, ...body } = request;
  const text = JSON.stringify(body);
  const call = (_o, onChunk, token) => inner.openai(kind, text, onChunk, token);
  if (body.stream === true) {
    return (async function* () {
      for await (const chunk of stream(call, { signal })) yield JSON.parse(chunk);
    })();
  }
  return run(call, { signal }).then((answer) => JSON.parse(answer));
}

/** Run `call(opts, onDelta, token)` with an AbortSignal wired to the cancel token. */
async function run(call, { signal, onDelta, ...opts }) {
  if (signal?.aborted) throw abortError();
  const token = new CancelToken();
  const abort = () => token.cancel();
  signal?.addEventListener('abort', abort, { once: true });
  try {
    return await call(opts, onDelta, token);
  } catch (e) {
    if (e?.name === 'AbortError' || signal?.aborted) throw abortError();
    throw e;
  } finally {
    signal?.removeEventListener('abort', abort);
    token.free();
  }
}

async function* stream(call, opts) {
  const queue = [];
  let wake = null;
  let finished = false;
  let failure = null;
  const controller = new AbortController();
  const signals = [controller.signal, opts.signal].filter(Boolean);
  const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
  const done = run(call, {
    ...opts,
    signal,
    onDelta: (d) => {
      queue.push(d);
      wake?.();
    },
  }).then(
    () => { finished = true; wake?.(); },
    (e) => { failure = e; finished = true; wake?.(); },
  );
  try {
    for (;;) {
      if (queue.length) {
        yield queue.shift();
      } else if (finished) {
        break;
      } else {
        await new Promise((r) => (wake = r));
        wake = null;
      }
    }
    if (failure) throw failure;
  } finally {
    // the consumer stopped early: stop generating too
    if (!finished) controller.abort();
    await done;
  }
}

/** Forget every cached download. */
export async function clearCache() {
  if (typeof caches !== 'undefined') await caches.delete(CACHE);
}
