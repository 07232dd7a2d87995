// Threads, cancellation and concurrency: the event loop stays free while a model generates,
// an AbortSignal stops a generation within a token, and calls on one model run in parallel.
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import { Llama } from '../lib/index.mjs'
import { collect, greedy, makeModel, missing, rejection } from './helpers.mjs'

const skip = missing()
if (skip) console.log(`# skipping the model tests: ${skip}`)

const ask = (content) => [{ role: 'user', content }]

function isAbortError(e) {
  assert.ok(e instanceof Error, String(e))
  assert.equal(e.name, 'AbortError')
  assert.equal(e.code, 'ABORTED')
  assert.match(e.message, /abort/)
  return true
}

describe('runtime behaviour', { skip: skip ?? false }, () => {
  let llm // milliseconds per token, so timings are meaningful

  before(async () => {
    llm = await Llama.load(makeModel('slow'), { backend: 'cpu' })
  })

  it('loads without blocking the event loop', async () => {
    let ticks = 0
    const timer = setInterval(() => ticks++, 1)
    const other = await Llama.load(makeModel('slow', 2), { backend: 'cpu' })
    clearInterval(timer)
    assert.ok(ticks > 0, 'the timer never fired during the load')
    assert.equal(other.nCtx, 512)
  })

  it('keeps the event loop free while generating', async (t) => {
    const gaps = []
    let last = performance.now()
    const timer = setInterval(() => {
      const now = performance.now()
      gaps.push(now - last)
      last = now
    }, 5)
    const t0 = performance.now()
    const r = await llm.chat(ask('Tell me a long story.'), { ...greedy, maxTokens: 80 })
    const elapsed = performance.now() - t0
    clearInterval(timer)
    assert.equal(r.usage.completionTokens, 80)
    t.diagnostic(`${gaps.length} ticks in ${elapsed.toFixed(0)} ms, longest gap ${Math.max(...gaps).toFixed(1)} ms`)
    // a blocked loop would fire once, after the whole generation
    assert.ok(gaps.length >= Math.min(10, elapsed / 20), `${gaps.length} ticks in ${elapsed.toFixed(0)} ms`)
    assert.ok(Math.max(...gaps) < Math.max(250, elapsed / 4), `longest gap ${Math.max(...gaps).toFixed(0)} ms of ${elapsed.toFixed(0)}`)
  })

  it('an AbortSignal stops a stream within a token, with an AbortError', async (t) => {
    const ac = new AbortController()
    const deltas = []
    let afterAbort = 0
    const e = await rejection(
      (async () => {
        for await (const d of llm.chatStream(ask('Count to a thousand.'), { ...greedy, maxTokens: 400, signal: ac.signal })) {
          deltas.push(d)
          if (ac.signal.aborted) afterAbort++
          if (deltas.length === 5) ac.abort()
        }
      })(),
    )
    isAbortError(e)
    t.diagnostic(`${deltas.length} deltas, ${afterAbort} after abort()`)
    // the delta being decoded when abort() ran may still arrive; nothing after it
    assert.ok(afterAbort <= 2, `${afterAbort} deltas after abort()`)
    assert.ok(deltas.length < 20)
  })

  it('an AbortSignal rejects chat() promptly and the model stays usable', async () => {
    const before = await llm.chat(ask('Hi'), { ...greedy, maxTokens: 6 })
    const ac = new AbortController()
    const started = performance.now()
    const p = llm.chat(ask('Count to a thousand.'), { ...greedy, maxTokens: 400, signal: ac.signal })
    setTimeout(() => ac.abort(), 50)
    const e = await rejection(p)
    isAbortError(e)
    assert.ok(performance.now() - started < 2000)
    // an already-aborted signal rejects without generating
    isAbortError(await rejection(llm.chat(ask('Hi'), { ...greedy, signal: AbortSignal.abort() })))
    isAbortError(await rejection(collect(llm.chatStream(ask('Hi'), { signal: AbortSignal.abort() }))))
    // same answer as before the aborts: the pooled KV states were not corrupted
    assert.deepEqual((await llm.chat(ask('Hi'), { ...greedy, maxTokens: 6 })).ids, before.ids)
  })

  it('breaking out of a stream stops the generation', async () => {
    const it = llm.chatStream(ask('Count to a thousand.'), { ...greedy, maxTokens: 400 })
    let n = 0
    for await (const _ of it) if (++n === 3) break
    // the engine noticed: a following call is not queued behind 400 tokens
    const t0 = performance.now()
    await llm.chat(ask('Hi'), { ...greedy, maxTokens: 2 })
    assert.ok(performance.now() - t0 < 2000)
  })

  it('two concurrent greedy chats give the sequential answers', async () => {
    const a = ask('What is the capital of France?')
    const b = ask('Write a haiku about llamas.')
    const opts = { ...greedy, maxTokens: 12 }
    const seqA = await llm.chat(a, opts)
    const seqB = await llm.chat(b, opts)
    const [parA, parB] = await Promise.all([llm.chat(a, opts), llm.chat(b, opts)])
    assert.deepEqual(parA.ids, seqA.ids)
    assert.deepEqual(parB.ids, seqB.ids)
    // streams too, interleaved
    const [dA, dB] = await Promise.all([collect(llm.chatStream(a, opts)), collect(llm.chatStream(b, opts))])
    assert.equal(dA.join(''), seqA.content)
    assert.equal(dB.join(''), seqB.content)
  })

  it('parallel: concurrent chats share decode steps and answer as one at a time', async () => {
    const batched = await Llama.load(makeModel('slow'), { backend: 'cpu', parallel: 4 })
    const asks = ['你好', '羊驼吃什么？', 'hi', 'Write a haiku about llamas.', '1+1=?'].map((q, i) => [
      ask(q),
      i % 2 === 0 ? { ...greedy, maxTokens: 8 + 3 * i } : { temperature: 0.8, seed: i, maxTokens: 8 + 3 * i },
    ])
    const want = []
    for (const [m, o] of asks) want.push(await llm.chat(m, o))
    const got = await Promise.all(asks.map(([m, o]) => batched.chat(m, o)))
    got.forEach((g, i) => assert.deepEqual(g.ids, want[i].ids, `request ${i}`))
    const stats = batched.batchStats
    assert.ok(stats.sequences > stats.steps, `some steps carried several chats: ${JSON.stringify(stats)}`)
    assert.equal(llm.batchStats, null)
    // a stream aborted mid-answer leaves the others and the model as they were
    const ac = new AbortController()
    let n = 0
    const aborted = rejection(
      (async () => {
        for await (const _ of batched.chatStream(ask('Count to a thousand.'), { ...greedy, maxTokens: 400, signal: ac.signal })) {
          if (++n === 3) ac.abort()
        }
      })(),
    )
    const [other] = await Promise.all([batched.chat(asks[0][0], asks[0][1]), aborted.then(isAbortError)])
    assert.deepEqual(other.ids, want[0].ids)
    await assert.rejects(Llama.load(makeModel('slow', 3), { backend: 'cpu', parallel: 0 }), /parallel/)
  })
})

describe('thread count from the environment', { skip: skip ?? false }, () => {
  it('an absurd RAYON_NUM_THREADS is clamped with a warning, not a crash', async () => {
    // 100000 crashed candle's pool (issue 18); the addon clamps it when it loads
    const { spawnSync } = await import('node:child_process')
    const code = `import { Llama } from ${JSON.stringify(new URL('../lib/index.mjs', import.meta.url).href)}
const llm = await Llama.load(${JSON.stringify(makeModel())}, { backend: 'cpu' })
const r = await llm.completeIds([1, 2], { maxTokens: 2, temperature: 0 })
console.log(r.usage.completionTokens)`
    const out = spawnSync(process.execPath, ['--input-type=module', '-e', code], {
      env: { ...process.env, RAYON_NUM_THREADS: '100000' },
      encoding: 'utf8',
      timeout: 120_000,
    })
    assert.equal(out.status, 0, out.stderr)
    assert.equal(out.stdout.trim(), '2')
    assert.match(out.stderr, /RAYON_NUM_THREADS=100000/)
  })
})
