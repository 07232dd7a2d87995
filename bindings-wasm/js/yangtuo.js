// yangtuo in the browser: an ES module over the wasm engine, close to WebLLM's API.
//
//   const llm = await Llama.load({ model: 'TheBloke/Llama-2-7B-Chat-GGUF:Q4_0', onProgress });
//   const { content } = await llm.chat([{ role: 'user', content: '咖啡的作用是什么？' }]);
//   for await (const d of llm.chatStream(messages, { signal })) render(d);
//
// Files are fetched as streams and kept in the Cache API (or OPFS), so a reload downloads
// nothing; each tensor goes to a WebGPU buffer as soon as its bytes are in, so a 4 GB
// model never sits whole in wasm memory. Without WebGPU the CPU backend runs in wasm.
// `createWorkerEngine` (worker-client.js) runs all of it in a Web Worker instead.
import init, { WasmLoader } from '../pkg/yangtuo_wasm.js';
import { fail, run, stream } from './calls.js';
import { HF_ENDPOINT, resolve } from './fetch.js';
import { clearAll, deleteModel, listModels, openStore } from './store.js';

export { createWorkerEngine } from './worker-client.js';

let booted;
const boot = () => (booted ??= init());

// Progress is reported at least this often: a stream (a cached response, a local file) may
// hand over many megabytes in one chunk.
const PROGRESS_STEP = 256 * 1024;

async function streamInto(loader, file, progress) {
  loader.beginFile(file.name, file.size);
  const reader = file.stream().getReader();
  let got = 0;
  for (;;) {
    let next;
    try {
      next = await reader.read();
    } catch (e) {
      const mib = (got / 2 ** 20).toFixed(1);
      throw fail(`the download of ${file.name} broke off after ${mib} MiB (${e.message}); what arrived is cached: load it again to resume`);
    }
    const { done, value } = next;
    if (done) break;
    got += value.length;
    for (let at = 0; at < value.length; at += PROGRESS_STEP) {
      const part = value.subarray(at, at + PROGRESS_STEP);
      loader.push(part);
      progress(part.length, file.name, loader.tensor);
    }
  }
  loader.endFile();
}

/** The wasm engine's memory now, in bytes (for measuring that a load streams). */
export async function wasmMemoryBytes() {
  return (await boot()).memory.buffer.byteLength;
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

  /** Options: js/yangtuo.d.ts, `LoadOptions`. */
  static async load({ model, onProgress, template, nCtx, parallel, kvCacheDtype, cache = true, backend = 'auto', endpoint = HF_ENDPOINT } = {}) {
    await boot();
    const store = await openStore(cache);
    const src = await resolve(model, { store, endpoint });
    // listed before the download, so a partial one shows in listCachedModels()
    if (store && src.key) await store.put(`model:${src.key}`, { model: src.key, files: src.urls, paths: src.paths });
    const loader = await WasmLoader.create(src.config, backend);
    try {
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
      return new Llama(await loader.finish(src.tokenizer, src.tokenizerConfig, template, nCtx, parallel, kvCacheDtype));
    } finally {
      // what a failed load uploaded goes now, not whenever the garbage collector runs
      loader.free();
    }
  }

  get device() {
    return this.#inner.device;
  }
  get nCtx() {
    return this.#inner.nCtx;
  }
  /** `{ steps, sequences }` batched so far (`null` unless loaded with `parallel` > 1). */
  get batchStats() {
    return this.#inner.batchStats;
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

/** Forget every cached download. */
export const clearCache = clearAll;

/** The models kept in the browser: [{ model, bytes, complete, files, cache }]. */
export const listCachedModels = listModels;

/** Delete one kept model (its id or URL, as `listCachedModels` names it); whether it was there. */
export const deleteCachedModel = deleteModel;
