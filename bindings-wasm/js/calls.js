// Promises and async iterators over the engine's callback calls, with AbortSignals wired
// to its cancel token. Shared by the page's `Llama` and the worker's.
import { CancelToken } from '../pkg/yangtuo_wasm.js';
import { iterate } from './queue.js';

export function fail(message, code = 'MODEL_LOAD') {
  const e = new Error(message);
  e.code = code;
  return e;
}

export function abortError() {
  const e = new Error('The operation was aborted');
  e.name = 'AbortError';
  e.code = 'ABORTED';
  return e;
}

/** Run `call(opts, onDelta, token)` with an AbortSignal wired to the cancel token. */
export async function run(call, { signal, onDelta, ...opts }) {
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

/** What `run` delivers through `onDelta`, as an async iterator; stopping early aborts. */
export function stream(call, { signal, ...opts }) {
  return iterate((push, both) => run(call, { ...opts, signal: both, onDelta: push }), signal);
}
