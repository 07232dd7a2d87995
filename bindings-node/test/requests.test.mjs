// The shared request set (tests/requests/openai.json), through llm.chat.completions.create /
// llm.completions.create and through `yangtuo serve` on the same model: each case gives its
// expected outcome, and the same outcome both ways (JSON shape, finish reason, greedy text).
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
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
    ;({ child: server, port } = await startServer(spawn, cliBin, ['--model', model, '--backend', 'cpu'], process.env))
  })

  after(() => server?.kill())

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
