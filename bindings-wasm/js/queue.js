// The one async-iterator-over-callbacks both front ends need: the page's engine (calls.js)
// and the worker's client (worker-client.js, which must not load the wasm module).

/**
 * What `produce(push, signal)` pushes, as an async iterator. It ends when `produce`'s promise
 * settles (throwing its failure); a consumer that stops early aborts `signal`, as does `outer`.
 */
export async function* iterate(produce, outer) {
  const queue = [];
  let wake = null;
  let finished = false;
  let failure = null;
  const controller = new AbortController();
  const signal = outer ? AbortSignal.any([controller.signal, outer]) : controller.signal;
  const push = (item) => {
    queue.push(item);
    wake?.();
  };
  const done = produce(push, signal).then(
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
    // the consumer stopped early: stop producing too
    if (!finished) controller.abort();
    await done;
  }
}
