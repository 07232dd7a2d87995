// The shared request set (tests/requests/openai.json), through llm.chat.completions.create /
// llm.completions.create and through `yangtuo serve` on the same model: each case gives its
// expected outcome, and the same outcome both ways (JSON shape, finish reason, greedy text).
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import OpenAI from 'openai'
import { Llama } from '../lib/index.mjs'
import { errorField, outcomeFromServer, outcomeOfAnswer, outcomeOfChunks, startServer } from '../../tests/requests/outcome.mjs'
import { cliBin, makeModel, missing, repoDir } from './helpers.mjs'

const { cases } = JSON.parse(readFileSync(join(repoDir, 'tests', 'requests', 'openai.json'), 'utf8'))
const skip = missing()
if (skip) console.log(`# skipping the model tests: ${skip}`)

async function runBinding(llm, c) {
  const api = c.endpoint === 'chat' ? llm.chat.completions : llm.completions
  try {
    if (c.request.stream) {
      const chunks = []
      for await (const chunk of await api.create(c.request)) chunks.push(chunk)
      return outcomeOfChunks(chunks)
    }
    return outcomeOfAnswer(await api.create(c.request))
  } catch (e) {
    return { error: errorField(e) }
  }
}

describe('the shared request set', { skip: skip ?? false }, () => {
  let llm
  let server
  let port

  before(async () => {
    const model = makeModel('tiny')
    llm = await Llama.load(model, { backend: 'cpu' })
    ;({ child: server, port } = await startServer(cliBin, ['--model', model, '--backend', 'cpu'], process.env))
  })

  after(() => server?.kill())

  it('the official openai package works against yangtuo serve, streamed and not', async () => {
    const client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: 'not-needed', maxRetries: 0 })
    const messages = [{ role: 'user', content: '咖啡的作用是什么?' }]
    const want = await llm.chat.completions.create({ messages, max_tokens: 8, temperature: 0 })
    const r = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, temperature: 0 })
    assert.equal(r.choices[0].message.content, want.choices[0].message.content)
    assert.equal(r.usage.completion_tokens, want.usage.completion_tokens)
    let text = ''
    const stream = await client.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, temperature: 0, stream: true })
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ''
    assert.equal(text, want.choices[0].message.content)
    const c = await client.completions.create({ model: 'tiny', prompt: '羊驼是', max_tokens: 4, temperature: 0 })
    assert.equal(c.choices[0].text, (await llm.completions.create({ prompt: '羊驼是', max_tokens: 4, temperature: 0 })).choices[0].text)
    // errors arrive as the package's typed errors
    await assert.rejects(client.chat.completions.create({ model: 'tiny', messages, temperature: -1 }), (e) => e.status === 400 && e.param === 'temperature')
  })

  for (const c of cases) {
    it(c.name, async () => {
      const mine = await runBinding(llm, c)
      const theirs = await outcomeFromServer(port, c)
      if (c.expect.error) assert.deepEqual(mine, { error: c.expect.error })
      else assert.equal(mine.object, c.expect.object, JSON.stringify(mine))
      assert.deepEqual(mine, theirs)
    })
  }
})
