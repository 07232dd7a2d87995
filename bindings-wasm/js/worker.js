// The Web Worker side of `createWorkerEngine`: the wasm engine, WebGPU (available in
// dedicated workers) and the downloads all run here, so the page never stalls. Start it
// as a module worker:
//
//   new Worker(new URL('yangtuo-web/js/worker.js', import.meta.url), { type: 'module' })
//
// Each request is { id, op, ... }; the answers are { id, progress }, { id, item } (stream
// items), then one { id, result } or { id, error }. { op: 'abort', target } aborts a request.
import { Llama, clearCache, deleteCachedModel, listCachedModels, wasmMemoryBytes } from './yangtuo.js';

let llm = null;
const sessions = new Map();
const controllers = new Map();

const info = (l) => ({ device: l.device, nCtx: l.nCtx, template: l.template });
const errorFields = (e) => ({ name: e?.name ?? 'Error', message: e?.message ?? String(e), code: e?.code, index: e?.index });

function model() {
  if (!llm) {
    const e = new Error('no model is loaded in this worker');
    e.code = 'INVALID_ARG';
    throw e;
  }
  return llm;
}

function session(id) {
  const s = sessions.get(id);
  if (!s) throw Object.assign(new Error(`no session ${id} in this worker`), { code: 'INVALID_ARG' });
  return s;
}

/** `onDelta` for a chat whose caller asked for deltas: each one is an item. */
const onDelta = (deltas, reply) => (deltas ? { onDelta: (d) => reply({ item: d }) } : {});

/** What each op does: a value to answer with, or an async iterator whose items stream. */
const ops = {
  async load({ options }, reply) {
    llm = await Llama.load({ ...options, onProgress: (p) => reply({ progress: p }) });
    sessions.clear();
    return info(llm);
  },
  chat: ({ messages, options, deltas }, reply, signal) => model().chat(messages, { ...options, signal, ...onDelta(deltas, reply) }),
  chatStream: ({ messages, options }, _reply, signal) => model().chatStream(messages, { ...options, signal }),
  openai({ kind, request }, _reply, signal) {
    const api = kind === 'chat' ? model().chat.completions : model().completions;
    return api.create({ ...request, signal });
  },
  tokenize: ({ text }) => model().tokenize(text),
  detokenize: ({ ids }) => model().detokenize(ids),
  session({ session: sid, options }) {
    sessions.set(sid, model().session(options));
    return null;
  },
  async sessionChat({ session: sid, text, options, deltas }, reply, signal) {
    const s = session(sid);
    const result = await s.chat(text, { ...options, signal, ...onDelta(deltas, reply) });
    return { result, messages: s.messages };
  },
  sessionChatStream: ({ session: sid, text, options }, _reply, signal) => session(sid).chatStream(text, { ...options, signal }),
  sessionMessages: ({ session: sid }) => session(sid).messages,
  sessionReset({ session: sid }) {
    session(sid).reset();
    return null;
  },
  sessionClose({ session: sid }) {
    sessions.delete(sid);
    return null;
  },
  listCachedModels: () => listCachedModels(),
  deleteCachedModel: ({ model: m }) => deleteCachedModel(m),
  clearCache: () => clearCache(),
  wasmMemoryBytes: () => wasmMemoryBytes(),
};

self.onmessage = async ({ data }) => {
  const { id, op } = data;
  if (op === 'abort') return controllers.get(data.target)?.abort();
  const reply = (m) => self.postMessage({ id, ...m });
  const controller = new AbortController();
  controllers.set(id, controller);
  try {
    if (!Object.hasOwn(ops, op)) throw Object.assign(new Error(`unknown op \`${op}\``), { code: 'INVALID_ARG' });
    const out = await ops[op](data, reply, controller.signal);
    if (out && typeof out[Symbol.asyncIterator] === 'function') {
      for await (const item of out) reply({ item });
      reply({ result: null });
    } else {
      reply({ result: out });
    }
  } catch (e) {
    reply({ error: errorFields(e) });
  } finally {
    controllers.delete(id);
  }
};
