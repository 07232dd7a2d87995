'use strict'
// The public API of the npm package `yangtuo`: promises, async iterators and AbortSignal
// over the native binding (../index.js, written by `napi build`). No engine logic lives
// here. Every native call takes a CancelToken and one callback that receives, in order,
// `(null, item, null)` per text delta or load step, then `(null, null, result)` or
// `(error, null, null)`; errors arrive as Error objects with a `code` already set.

const { fileURLToPath } = require('node:url')
const native = require('../index.js')

// Tie an optional AbortSignal to a fresh CancelToken; returns the token and a cleanup.
function cancelToken(signal) {
  const token = new native.CancelToken()
  if (signal == null) return { token, done() {} }
  if (typeof signal.addEventListener !== 'function' || typeof signal.aborted !== 'boolean') {
    throw invalidArg('signal', 'must be an AbortSignal')
  }
  if (signal.aborted) {
    // the worker sees the token set before it starts and rejects with an AbortError
    token.cancel()
    return { token, done() {} }
  }
  const onAbort = () => token.cancel()
  signal.addEventListener('abort', onAbort, { once: true })
  return { token, done: () => signal.removeEventListener('abort', onAbort) }
}

function invalidArg(name, msg) {
  const e = new TypeError(`invalid argument \`${name}\`: ${msg}`)
  e.code = 'INVALID_ARG'
  return e
}

function splitOptions(options) {
  if (options == null) return { signal: undefined, rest: undefined }
  if (typeof options !== 'object') throw invalidArg('options', 'must be an object')
  const { signal, ...rest } = options
  return { signal, rest }
}

// One call to its promise. `begin(options, token, stream, onEvent)` starts the native work.
function complete(begin, options) {
  return new Promise((resolve, reject) => {
    const { signal, rest } = splitOptions(options)
    const { token, done } = cancelToken(signal)
    try {
      begin(rest, token, false, (err, _delta, result) => {
        done()
        if (err) reject(err)
        else resolve(result)
      })
    } catch (e) {
      done()
      throw e
    }
  })
}

// One call to an async iterator of text deltas; its return value is the completion.
// Leaving the loop early (break, throw) stops the generation before its next token.
async function* stream(begin, options) {
  const { signal, rest } = splitOptions(options)
  const { token, done } = cancelToken(signal)
  const deltas = []
  let outcome = null
  let wake = null
  try {
    begin(rest, token, true, (err, delta, result) => {
      if (err) outcome = { err }
      else if (result) outcome = { result }
      else deltas.push(delta)
      if (wake) {
        wake()
        wake = null
      }
    })
    for (;;) {
      if (deltas.length > 0) {
        yield deltas.shift()
        continue
      }
      if (outcome) {
        if (outcome.err) throw outcome.err
        return outcome.result
      }
      await new Promise((resolve) => {
        wake = resolve
      })
    }
  } finally {
    done()
    if (!outcome) token.cancel()
  }
}

// One OpenAI-shaped request (`kind` 'chat' or 'text') to the answer object, or with
// `stream: true` to an async iterator of chunk objects. The request goes to the engine as
// JSON and is checked there; `signal` (an AbortSignal) is the only field read here.
function openai(native, kind, request) {
  if (request == null || typeof request !== 'object') throw invalidArg('request', 'must be an object')
  const { signal, ...body } = request
  const text = JSON.stringify(body)
  const begin = (_o, token, _s, cb) => native.openai(kind, text, token, cb)
  if (body.stream === true) {
    return (async function* () {
      const chunks = stream(begin, { signal })
      for await (const chunk of chunks) yield JSON.parse(chunk)
    })()
  }
  return complete(begin, { signal }).then((answer) => JSON.parse(answer))
}

/** A conversation that keeps its KV cache between turns (the engine's ChatSession). */
class ChatSession {
  #native

  constructor(nativeSession) {
    if (!(nativeSession instanceof native.NativeSession)) {
      throw new TypeError('create a ChatSession with llm.session({ system })')
    }
    this.#native = nativeSession
  }

  /** Send a user message; resolves to the answer, which joins `messages`. */
  chat(text, options) {
    return complete((o, t, s, cb) => this.#native.send(text, o, t, s, cb), options)
  }

  /** As `chat`, yielding the answer's text deltas. */
  chatStream(text, options) {
    return stream((o, t, s, cb) => this.#native.send(text, o, t, s, cb), options)
  }

  /** The conversation so far (a copy): the system prompt, then user and assistant turns. */
  get messages() {
    return this.#native.messages
  }

  /** Forget the conversation; the system prompt stays. */
  reset() {
    this.#native.reset()
  }
}

/**
 * A loaded Llama model. Calls run on worker threads, so the event loop stays free.
 * Concurrent calls on one model are safe and run in parallel: each gets its own pooled KV
 * state, and the engine serialises device steps token by token.
 */
class Llama {
  #native

  constructor(nativeLlama) {
    if (!(nativeLlama instanceof native.NativeLlama)) {
      throw new TypeError('load a model with `await Llama.load(path, options)`')
    }
    this.#native = nativeLlama
    // `llm.chat(messages)` stays the short form; `llm.chat.completions.create(request)` is
    // the `openai` package's (and WebLLM's) call, returning OpenAI's objects.
    const chat = (messages, options) => this.#chat(messages, options)
    chat.completions = { create: (request) => openai(this.#native, 'chat', request) }
    Object.defineProperty(this, 'chat', { value: chat })
    /** `llm.completions.create({ prompt, ... })`: OpenAI's raw text completion. */
    this.completions = { create: (request) => openai(this.#native, 'text', request) }
  }

  /** Load a model folder (config.json + safetensors + tokenizer) or a .gguf file, off the main thread. */
  static load(model, options) {
    return new Promise((resolve, reject) => {
      if (model instanceof URL) model = fileURLToPath(model)
      if (options != null && typeof options !== 'object') throw invalidArg('options', 'must be an object')
      const { onProgress, ...rest } = options ?? {}
      if (onProgress != null && typeof onProgress !== 'function') {
        throw invalidArg('onProgress', 'must be a function')
      }
      let thrown = null
      native.NativeLlama.load(model, rest, (err, progress, llama) => {
        if (progress) {
          if (onProgress && !thrown) {
            try {
              onProgress(progress)
            } catch (e) {
              thrown = e
            }
          }
        } else if (err || thrown) reject(err ?? thrown)
        else resolve(new Llama(llama))
      })
    })
  }

  /** Answer `messages` ({ role, content }[]) with the model's chat template. */
  #chat(messages, options) {
    return complete((o, t, s, cb) => this.#native.chat(messages, o, t, s, cb), options)
  }

  /** As `chat`, yielding text deltas; they concatenate to the answer `chat` gives. */
  chatStream(messages, options) {
    return stream((o, t, s, cb) => this.#native.chat(messages, o, t, s, cb), options)
  }

  /** Raw completion of `prompt` (BOS, then the text; no template). */
  generate(prompt, options) {
    return complete((o, t, s, cb) => this.#native.generate(prompt, o, t, s, cb), options)
  }

  generateStream(prompt, options) {
    return stream((o, t, s, cb) => this.#native.generate(prompt, o, t, s, cb), options)
  }

  /** Continue exactly these prompt token ids (nothing added), like `yangtuo generate --ids`. */
  completeIds(ids, options) {
    return complete((o, t, s, cb) => this.#native.completeIds(ids, o, t, s, cb), options)
  }

  /** A conversation that keeps its KV cache between turns. */
  session(options) {
    const system = options?.system
    if (system != null && typeof system !== 'string') throw invalidArg('system', 'must be a string')
    return new ChatSession(this.#native.session(system ?? undefined))
  }

  /** Token ids of `text` (no BOS). */
  tokenize(text) {
    return this.#native.tokenize(text)
  }

  detokenize(ids) {
    return this.#native.detokenize(ids)
  }

  /** Context length in tokens: prompt plus answer must fit. */
  get nCtx() {
    return this.#native.nCtx
  }

  /** The device the model runs on. */
  get device() {
    return this.#native.device
  }

  get vocabSize() {
    return this.#native.vocabSize
  }

  /** `{ steps, sequences }` batched so far (`null` unless loaded with `parallel` > 1). */
  get batchStats() {
    return this.#native.batchStats
  }
}

module.exports = { Llama, ChatSession }
