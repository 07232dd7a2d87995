// What must agree between front ends for one request of the shared set (openai.json): the
// JSON shape, the finish reason and the text; ids and timings are left out. Python's copy is
// in bindings-python/tests/test_request_suite.py.

import { spawn } from 'node:child_process'

const sorted = (o) => Object.keys(o).sort()

export function outcomeOfAnswer(answer) {
  const choice = answer.choices[0]
  return {
    object: answer.object,
    keys: sorted(answer),
    choice_keys: sorted(choice),
    finish_reason: choice.finish_reason,
    content: choice.message ? choice.message.content : choice.text,
    logprob_tokens: choice.logprobs ? choice.logprobs.content.map((t) => t.token) : null,
  }
}

export function outcomeOfChunks(chunks) {
  const first = chunks[0]
  const withChoices = chunks.filter((c) => c.choices.length > 0)
  return {
    object: first.object,
    keys: sorted(first),
    choice_keys: sorted(first.choices[0]),
    finish_reason: withChoices.map((c) => c.choices[0].finish_reason).filter((f) => f),
    content: withChoices.map((c) => c.choices[0].delta.content ?? '').join(''),
    usage_last: chunks.at(-1).usage != null,
  }
}

/** The field a JS error from the engine names (its messages start "invalid argument `name`"). */
export function errorField(e) {
  if (e.code === 'TEMPLATE') return 'messages'
  const m = /`([a-z_]+)/.exec(e.message)
  return m ? m[1] : `${e.code}: ${e.message}`
}

/** Run one case against `yangtuo serve` at `port`: its outcome, or `{error: param}`. */
export async function outcomeFromServer(port, c) {
  const path = c.endpoint === 'chat' ? '/v1/chat/completions' : '/v1/completions'
  const r = await fetch(`http://127.0.0.1:${port}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(c.request),
  })
  const body = await r.text()
  if (!r.ok) return { error: JSON.parse(body).error.param }
  if (!c.request.stream) return outcomeOfAnswer(JSON.parse(body))
  const events = body.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6))
  if (events.at(-1) !== '[DONE]') throw new Error(`the stream did not end with [DONE]: ${body}`)
  return outcomeOfChunks(events.slice(0, -1).map((e) => JSON.parse(e)))
}

/** Start `yangtuo serve` (`cli`, with `args`) on a free port: the child and its port. */
export async function startServer(cli, args, env) {
  const child = spawn(cli, ['serve', ...args, '--port', '0'], { env: { ...env, RUST_LOG: 'info' }, stdio: ['ignore', 'ignore', 'pipe'] })
  const port = await new Promise((resolve, reject) => {
    let log = ''
    child.stderr.on('data', (d) => {
      log += d
      const m = /http:\/\/127\.0\.0\.1:(\d+)/.exec(log)
      if (m) resolve(Number(m[1]))
    })
    child.on('exit', () => reject(new Error(`yangtuo serve exited:\n${log}`)))
  })
  return { child, port }
}
