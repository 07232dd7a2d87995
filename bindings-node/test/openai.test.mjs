// The OpenAI-shaped calls: llm.chat.completions.create and llm.completions.create return
// the objects the `openai` package returns (chunks when streamed), with the same greedy
// content as llm.chat; a field the engine does not implement rejects with INVALID_ARG
// naming it.
import assert from 'node:assert/strict'
import { before, describe, it } from 'node:test'
import { Llama } from '../lib/index.mjs'
import { makeModel, missing } from './helpers.mjs'

const skip = missing()
if (skip) console.log(`# skipping the model tests: ${skip}`)

const messages = [{ role: 'user', content: '咖啡的作用是什么?' }]

describe('OpenAI-shaped calls', { skip: skip ?? false }, () => {
  let llm

  before(async () => {
    llm = await Llama.load(makeModel('tiny'), { backend: 'cpu' })
  })

  it('chat.completions.create returns a chat.completion equal to chat()', async () => {
    const r = await llm.chat.completions.create({ messages, max_tokens: 12, temperature: 0 })
    const want = await llm.chat(messages, { maxTokens: 12, temperature: 0 })
    assert.equal(r.object, 'chat.completion')
    assert.match(r.id, /^chatcmpl-/)
    assert.deepEqual(r.choices[0].message, { role: 'assistant', content: want.content })
    assert.equal(r.choices[0].finish_reason, want.finishReason)
    assert.equal(r.usage.completion_tokens, want.usage.completionTokens)
    assert.equal(typeof r.usage.prompt_tokens_details.cached_tokens, 'number')
  })

  it('streams chunks that concatenate to the answer', async () => {
    const whole = await llm.chat.completions.create({ messages, max_tokens: 12, temperature: 0 })
    const chunks = []
    for await (const c of await llm.chat.completions.create({ messages, max_tokens: 12, temperature: 0, stream: true })) {
      chunks.push(c)
    }
    assert.equal(chunks[0].choices[0].delta.role, 'assistant')
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'))
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')
    assert.equal(text, whole.choices[0].message.content)
    assert.equal(chunks.at(-1).choices[0].finish_reason, whole.choices[0].finish_reason)
  })

  it('completions.create is a raw text completion', async () => {
    const r = await llm.completions.create({ prompt: '咖啡的作用是', max_tokens: 8, temperature: 0 })
    const want = await llm.generate('咖啡的作用是', { maxTokens: 8, temperature: 0 })
    assert.equal(r.object, 'text_completion')
    assert.equal(r.choices[0].text, want.content)
  })

  it('response_format keeps the answer inside a JSON Schema', async () => {
    const schema = {
      type: 'object',
      properties: { city: { enum: ['北京', '上海', 'Lima'] }, days: { type: 'integer', minimum: 1, maximum: 9 } },
      required: ['city', 'days'],
      additionalProperties: false,
    }
    for (const sampling of [{ temperature: 0 }, { temperature: 1, seed: 4 }]) {
      const r = await llm.chat.completions.create({
        messages, max_tokens: 200, ...sampling,
        response_format: { type: 'json_schema', json_schema: { name: 'trip', schema, strict: true } },
      })
      assert.equal(r.choices[0].finish_reason, 'stop')
      const v = JSON.parse(r.choices[0].message.content)
      assert.deepEqual(Object.keys(v).sort(), ['city', 'days'])
      assert.ok(['北京', '上海', 'Lima'].includes(v.city) && Number.isInteger(v.days) && v.days >= 1 && v.days <= 9, JSON.stringify(v))
    }
    await assert.rejects(llm.chat.completions.create({ messages, response_format: { type: 'xml' } }), (e) => {
      assert.equal(e.code, 'INVALID_ARG')
      assert.ok(e.message.includes('response_format'), e.message)
      return true
    })
  })

  it('tools: a call whose arguments satisfy the schema, whole and streamed, and back in the history', async () => {
    const parameters = {
      type: 'object',
      properties: { city: { enum: ['北京', '上海'] }, days: { type: 'integer', minimum: 1, maximum: 7 } },
      required: ['city', 'days'],
    }
    const tools = [{ type: 'function', function: { name: 'get_weather', description: '天气', parameters } }]
    const request = { messages, tools, tool_choice: 'required', max_tokens: 200, temperature: 1, seed: 3 }
    const r = await llm.chat.completions.create(request)
    assert.equal(r.choices[0].finish_reason, 'tool_calls')
    assert.equal(r.choices[0].message.content, null)
    const call = r.choices[0].message.tool_calls[0]
    assert.equal(call.function.name, 'get_weather')
    const args = JSON.parse(call.function.arguments)
    assert.deepEqual(Object.keys(args).sort(), ['city', 'days'])
    assert.ok(['北京', '上海'].includes(args.city) && Number.isInteger(args.days) && args.days >= 1 && args.days <= 7, call.function.arguments)
    const chunks = []
    for await (const c of await llm.chat.completions.create({ ...request, stream: true })) chunks.push(c)
    const streamed = chunks.flatMap((c) => c.choices[0]?.delta.tool_calls ?? [])
    assert.deepEqual(streamed.map((t) => t.function), [call.function])
    assert.equal(chunks.at(-1).choices[0].finish_reason, 'tool_calls')
    const history = [...messages, { role: 'assistant', content: null, tool_calls: [call] }, { role: 'tool', tool_call_id: call.id, content: '晴' }]
    const after = await llm.chat.completions.create({ messages: history, tools, max_tokens: 4, seed: 1 })
    assert.ok(['stop', 'length', 'tool_calls'].includes(after.choices[0].finish_reason))
    await assert.rejects(llm.chat.completions.create({ messages, tools, tool_choice: { type: 'function', function: { name: 'nope' } } }), (e) => {
      assert.equal(e.code, 'INVALID_ARG')
      assert.ok(e.message.includes('tool_choice'), e.message)
      return true
    })
  })

  it('rejects fields it does not implement, naming them', async () => {
    for (const [field, value] of [['frobnicate', 1], ['n', 2], ['top_logprobs', 2], ['seed', -2], ['top_k', 0]]) {
      await assert.rejects(llm.chat.completions.create({ messages, [field]: value }), (e) => {
        assert.equal(e.code, 'INVALID_ARG')
        assert.ok(e.message.includes(field), e.message)
        return true
      })
    }
    // seed -1 is "random", as in llama.cpp
    const r = await llm.chat.completions.create({ messages, max_tokens: 2, seed: -1, temperature: 1 })
    assert.equal(r.choices[0].message.role, 'assistant')
  })

  it('reports token logprobs, whole and streamed', async () => {
    const r = await llm.chat.completions.create({ messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2 })
    const content = r.choices[0].logprobs.content
    assert.equal(content.length, r.usage.completion_tokens)
    for (const t of content) {
      assert.ok(t.logprob <= 0 && t.top_logprobs.length === 2 && t.top_logprobs[0].logprob === t.logprob)
      assert.equal(Buffer.from(t.bytes).length, t.bytes.length)
    }
    const streamed = []
    for await (const c of await llm.chat.completions.create({ messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 2, stream: true })) {
      streamed.push(...(c.choices[0]?.logprobs?.content ?? []))
    }
    assert.deepEqual(streamed.map((t) => t.token), content.map((t) => t.token))
    const c = await llm.completions.create({ prompt: '咖啡', max_tokens: 4, temperature: 0, logprobs: 1 })
    assert.equal(c.choices[0].logprobs.tokens.length, c.usage.completion_tokens)
  })

  it('an abort mid-answer keeps the text so far, finish_reason "abort"', async () => {
    const ac = new AbortController()
    let text = ''
    let pieces = 0
    let last
    for await (const c of await llm.chat.completions.create({ messages, max_tokens: 200, temperature: 0, stream: true, signal: ac.signal })) {
      const piece = c.choices[0]?.delta.content ?? ''
      text += piece
      if (piece && ++pieces === 3) ac.abort()
      last = c
    }
    assert.equal(last.choices[0].finish_reason, 'abort')
    assert.ok(pieces >= 3 && text.length > 0)
  })

  it('an AbortSignal stops it', async () => {
    const ac = new AbortController()
    ac.abort()
    await assert.rejects(llm.chat.completions.create({ messages, signal: ac.signal }), (e) => e.name === 'AbortError' || e.code === 'ABORTED')
  })
})
