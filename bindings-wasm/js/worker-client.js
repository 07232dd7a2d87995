// `createWorkerEngine(worker, loadOptions)`: the engine in a Web Worker (js/worker.js) behind
// the same calls as `Llama`, so the page's UI never stalls while a model loads or answers
// (WebLLM's `CreateWebWorkerMLCEngine`). Differences from `Llama`: `tokenize` and
// `detokenize` return promises, and `terminate()` ends the worker.
//
//   const worker = new Worker(new URL('yangtuo-web/js/worker.js', import.meta.url), { type: 'module' });
//   const llm = await createWorkerEngine(worker, { model: 'owner/name:Q4_0', onProgress });
//   for await (const d of llm.chatStream(messages, { signal })) render(d);

import { iterate } from './queue.js';

function abortError() {
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  e.code = 'ABORTED';
  return e;
}

/** The worker's error fields as an Error again. */
function revive({ name, message, code, index }) {
  const e = new Error(message);
  e.name = name;
  if (code !== undefined) e.code = code;
  if (index !== undefined) e.index = index;
  return e;
}

/** Requests to one worker, each answered by id. */
class Channel {
  #worker;
  #next = 1;
  #open = new Map();

  constructor(worker) {
    this.#worker = worker;
    worker.addEventListener('message', ({ data }) => this.#open.get(data.id)?.(data));
    worker.addEventListener('error', (ev) => {
      const e = new Error(`the yangtuo worker failed: ${ev.message ?? 'an error'}`);
      for (const handler of this.#open.values()) handler({ error: { name: 'Error', message: e.message } });
    });
  }

  /**
   * Send `op` with `fields`; `onMessage` sees progress and items. Resolves to the result;
   * `signal` aborts it in the worker.
   */
  call(op, fields, { signal, onMessage } = {}) {
    if (signal?.aborted) return Promise.reject(abortError());
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      const abort = () => this.#worker.postMessage({ op: 'abort', target: id });
      signal?.addEventListener('abort', abort, { once: true });
      this.#open.set(id, (m) => {
        if ('result' in m || 'error' in m) {
          this.#open.delete(id);
          signal?.removeEventListener('abort', abort);
          if ('error' in m) reject(m.error.name === 'AbortError' ? abortError() : revive(m.error));
          else resolve(m.result);
        } else {
          onMessage?.(m);
        }
      });
      this.#worker.postMessage({ id, op, ...fields });
    });
  }

  /** `op`'s items as an async iterator; stopping early aborts it. */
  items(op, fields, { signal } = {}) {
    return iterate((push, both) => this.call(op, fields, { signal: both, onMessage: (m) => 'item' in m && push(m.item) }), signal);
  }

  terminate() {
    this.#worker.terminate();
  }
}

/** Options without what cannot cross to the worker (functions, the signal). */
function split(opts = {}) {
  const { signal, onDelta, ...options } = opts;
  return { signal, onDelta, options };
}

/** A chat call, with `onDelta` fed from the worker's items. */
function chatCall(channel, op, fields, opts) {
  const { signal, onDelta, options } = split(opts);
  return channel.call(op, { ...fields, options, deltas: !!onDelta }, { signal, onMessage: (m) => 'item' in m && onDelta?.(m.item) });
}

class WorkerSession {
  #channel;
  #id;
  #messages;

  constructor(channel, id, system) {
    this.#channel = channel;
    this.#id = id;
    this.#messages = system ? [{ role: 'system', content: system }] : [];
  }
  /** The conversation so far (as of the last answer or reset). */
  get messages() {
    return this.#messages.map((m) => ({ ...m }));
  }
  async reset() {
    await this.#channel.call('sessionReset', { session: this.#id });
    this.#messages = await this.#channel.call('sessionMessages', { session: this.#id });
  }
  async chat(text, opts = {}) {
    const { result, messages } = await chatCall(this.#channel, 'sessionChat', { session: this.#id, text }, opts);
    this.#messages = messages;
    return result;
  }
  async *chatStream(text, opts = {}) {
    const { signal, options } = split(opts);
    try {
      yield* this.#channel.items('sessionChatStream', { session: this.#id, text, options }, { signal });
    } finally {
      this.#messages = await this.#channel.call('sessionMessages', { session: this.#id });
    }
  }
}

export class WorkerLlama {
  #channel;
  #info;
  #sessions = 0;

  constructor(channel, info) {
    this.#channel = channel;
    this.#info = info;
    const chat = (messages, opts) => chatCall(this.#channel, 'chat', { messages }, opts);
    chat.completions = { create: (request) => this.#openai('chat', request) };
    Object.defineProperty(this, 'chat', { value: chat });
    this.completions = { create: (request) => this.#openai('text', request) };
  }

  get device() {
    return this.#info.device;
  }
  get nCtx() {
    return this.#info.nCtx;
  }
  get template() {
    return this.#info.template;
  }
  tokenize(text) {
    return this.#channel.call('tokenize', { text });
  }
  detokenize(ids) {
    return this.#channel.call('detokenize', { ids: Array.from(ids) });
  }
  chatStream(messages, opts = {}) {
    const { signal, options } = split(opts);
    return this.#channel.items('chatStream', { messages, options }, { signal });
  }
  session({ system } = {}) {
    const id = ++this.#sessions;
    // the worker creates it before any later request of this channel runs
    void this.#channel.call('session', { session: id, options: { system } });
    return new WorkerSession(this.#channel, id, system);
  }
  #openai(kind, request) {
    if (request == null || typeof request !== 'object') throw new TypeError('invalid argument `request`: must be an object');
    const { signal, ...body } = request;
    if (body.stream === true) return this.#channel.items('openai', { kind, request: body }, { signal });
    return this.#channel.call('openai', { kind, request: body }, { signal });
  }
  /** The wasm engine's memory in the worker, in bytes. */
  wasmMemoryBytes() {
    return this.#channel.call('wasmMemoryBytes', {});
  }
  listCachedModels() {
    return this.#channel.call('listCachedModels', {});
  }
  deleteCachedModel(model) {
    return this.#channel.call('deleteCachedModel', { model });
  }
  /** End the worker (and free its GPU memory). */
  terminate() {
    this.#channel.terminate();
  }
}

/**
 * Load a model in `worker` (a module Worker running js/worker.js) with `Llama.load`'s
 * options; resolves to a `WorkerLlama` once it is ready. `onProgress` stays on the page.
 */
export async function createWorkerEngine(worker, { onProgress, model, ...options } = {}) {
  const channel = new Channel(worker);
  // a URL is resolved against the page, not the worker's script
  if (typeof model === 'string' && (/^[./]/.test(model) || model.includes('://') || /\.gguf($|\?)/i.test(model))) {
    model = new URL(model, location.href).href;
  } else if (typeof FileList !== 'undefined' && model instanceof FileList) {
    model = [...model];
  }
  const info = await channel.call('load', { options: { ...options, model } }, { onMessage: (m) => 'progress' in m && onProgress?.(m.progress) });
  return new WorkerLlama(channel, info);
}
