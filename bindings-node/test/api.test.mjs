// The API over a random tiny model: load, tokenize, chat, streaming, sessions, raw completion.
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { before, describe, it } from 'node:test'
import { ChatSession, Llama } from '../lib/index.mjs'
import { collect, greedy, makeModel, missing, sharedDir } from './helpers.mjs'

const skip = missing()
if (skip) console.log(`# skipping the model tests: ${skip}`)

const hello = [{ role: 'user', content: 'Hello! Who are you?' }]

describe('Llama over a random tiny model', { skip: skip ?? false }, () => {
  let dir
  let llm
  const progress = []

  before(async () => {
    dir = makeModel('tiny')
    llm = await Llama.load(dir, { backend: 'cpu', onProgress: (p) => progress.push(p) })
  })

  it('reports load progress per tensor', () => {
    assert.ok(progress.length >= 2 * 9 + 3, `${progress.length} progress events`)
    for (const [i, p] of progress.entries()) {
      assert.equal(typeof p.tensor, 'string')
      assert.ok(p.doneBytes > 0 && p.doneBytes <= p.totalBytes, JSON.stringify(p))
      if (i > 0) assert.ok(p.doneBytes >= progress[i - 1].doneBytes)
    }
  })

  it('exposes nCtx, device and vocabSize', async () => {
    assert.equal(llm.nCtx, 512) // the random model's max_position_embeddings
    assert.equal(llm.vocabSize, 32000)
    assert.match(llm.device, /cpu/i)
    const small = await Llama.load(dir, { backend: 'cpu', nCtx: 64 })
    assert.equal(small.nCtx, 64)
  })

  it('tokenizes like SentencePiece (golden ids) and detokenizes back', () => {
    const lines = readFileSync(join(sharedDir, 'golden', 'tokenize-llama2.jsonl'), 'utf8').trim().split('\n')
    for (const line of lines.slice(0, 40)) {
      const { text, ids } = JSON.parse(line)
      assert.deepEqual(llm.tokenize(text), ids, JSON.stringify(text))
    }
    assert.equal(llm.detokenize(llm.tokenize('Hello world')), 'Hello world')
  })

  it('chat answers with content, finishReason and usage', async () => {
    const r = await llm.chat(hello, { ...greedy, maxTokens: 8 })
    assert.equal(typeof r.content, 'string')
    assert.ok(['stop', 'length'].includes(r.finishReason))
    assert.equal(r.usage.completionTokens, r.ids.length)
    assert.equal(r.usage.totalTokens, r.usage.promptTokens + r.usage.completionTokens)
    assert.ok(r.usage.promptTokens > 5)
    if (r.finishReason === 'length') assert.equal(r.ids.length, 8)
    // greedy is deterministic, also across the pooled KV states
    assert.deepEqual((await llm.chat(hello, { ...greedy, maxTokens: 8 })).ids, r.ids)
  })

  it('chatStream deltas concatenate to the chat answer for the same seed', async () => {
    const opts = { temperature: 0.9, topP: 0.95, topK: 200, seed: 7, maxTokens: 40 }
    const whole = await llm.chat(hello, opts)
    const deltas = await collect(llm.chatStream(hello, opts))
    assert.ok(deltas.length > 1, `${deltas.length} deltas`)
    assert.ok(deltas.every((d) => typeof d === 'string' && d.length > 0))
    assert.equal(deltas.join(''), whole.content)
    // the iterator's return value is the completion
    const it = llm.chatStream(hello, opts)
    let step
    while (!(step = await it.next()).done);
    assert.deepEqual(step.value.ids, whole.ids)
  })

  it('stop strings end the answer before them', async () => {
    const free = await llm.chat(hello, { ...greedy, maxTokens: 30 })
    const cut = free.content.slice(4, 7)
    if (cut.length < 3) return // a random answer without room for a stop string
    const r = await llm.chat(hello, { ...greedy, maxTokens: 30, stop: [cut] })
    assert.equal(r.finishReason, 'stop')
    assert.ok(!r.content.includes(cut))
    assert.ok(free.content.startsWith(r.content))
  })

  it('generate and completeIds run a raw prompt (BOS + text)', async () => {
    const prompt = 'Once upon a time'
    const a = await llm.generate(prompt, { ...greedy, maxTokens: 12 })
    const b = await llm.completeIds([1, ...llm.tokenize(prompt)], { ...greedy, maxTokens: 12 })
    assert.deepEqual(a.ids, b.ids)
    assert.equal(a.content, b.content)
    assert.equal(a.usage.promptTokens, 1 + llm.tokenize(prompt).length)
    assert.equal((await collect(llm.generateStream(prompt, { ...greedy, maxTokens: 12 }))).join(''), a.content)
  })

  it('a session keeps the conversation and answers as a fresh chat over it', async () => {
    const s = llm.session({ system: 'You are terse.' })
    assert.ok(s instanceof ChatSession)
    assert.deepEqual(s.messages, [{ role: 'system', content: 'You are terse.' }])
    const opts = { ...greedy, maxTokens: 10 }
    const first = await s.chat('Hi there', opts)
    const history = [
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'Hi there' },
    ]
    assert.deepEqual(first.ids, (await llm.chat(history, opts)).ids)
    history.push({ role: 'assistant', content: first.content })
    assert.deepEqual(s.messages, history)

    const deltas = await collect(s.chatStream('And then?', opts))
    history.push({ role: 'user', content: 'And then?' })
    const fresh = await llm.chat(history, opts)
    assert.equal(deltas.join(''), fresh.content)
    history.push({ role: 'assistant', content: fresh.content })
    assert.deepEqual(s.messages, history)

    // the second turn reused the cached first turn instead of running it again
    const third = await s.chat('More.', opts)
    assert.ok(third.timings.prefillTokens < third.usage.promptTokens, JSON.stringify(third.timings))

    s.reset()
    assert.deepEqual(s.messages, [{ role: 'system', content: 'You are terse.' }])
    assert.deepEqual((await s.chat('Hi there', opts)).ids, first.ids)
  })

  it('a session runs one turn at a time', async () => {
    const s = llm.session()
    // synchronous, so the first turn (400 tokens) is surely still running
    const a = s.chat('one', { ...greedy, maxTokens: 400 })
    const b = s.chat('two', greedy)
    assert.throws(() => s.reset(), { code: 'INVALID_ARG' })
    await assert.rejects(b, { code: 'INVALID_ARG', message: /still running/ })
    await a
    assert.equal(s.messages.length, 2)
    await s.chat('two', { ...greedy, maxTokens: 4 })
    assert.equal(s.messages.length, 4)
    // a turn that fails (or is aborted) leaves the history as it was and the session free
    await assert.rejects(s.chat('three', { temperature: -1 }), { code: 'INVALID_ARG' })
    await assert.rejects(s.chat('three', { signal: AbortSignal.abort() }), { name: 'AbortError' })
    await assert.rejects(s.chat([]), { code: 'INVALID_ARG' })
    assert.equal(s.messages.length, 4)
    await s.chat('three', { ...greedy, maxTokens: 4 })
    assert.equal(s.messages.length, 6)
  })
})
