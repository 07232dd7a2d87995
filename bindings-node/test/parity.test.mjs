// Parity with the CLI: for one model and prompt ids, the Node greedy answer is token for
// token what `yangtuo generate --ids ... --json --backend cpu` prints.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { before, describe, it } from 'node:test'
import { Llama } from '../lib/index.mjs'
import { cliBin, greedy, makeModel, missing } from './helpers.mjs'

const skip = missing() ?? (existsSync(cliBin) ? null : `the CLI is not at ${cliBin} (cargo build --release -p yangtuo-cli, or set YANGTUO_CLI)`)
if (skip) console.log(`# skipping the parity tests: ${skip}`)

function cli(dir, ids, maxTokens, backend = 'cpu') {
  const out = execFileSync(
    cliBin,
    ['generate', '--model', dir, '--ids', ids.join(','), '--max-tokens', String(maxTokens), '--json', '--backend', backend],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  )
  return JSON.parse(out.trim().split('\n').at(-1))
}

describe('parity with `yangtuo generate`', { skip: skip ?? false }, () => {
  let dir
  let llm

  before(async () => {
    dir = makeModel('tiny', 3)
    llm = await Llama.load(dir, { backend: 'cpu' })
  })

  for (const [name, text, maxTokens] of [
    ['an English prompt', 'The quick brown fox jumps over', 32],
    ['a Chinese prompt', '羊驼是一种', 24],
  ]) {
    it(`is token-identical for ${name}`, async () => {
      const ids = [1, ...llm.tokenize(text)]
      const want = cli(dir, ids, maxTokens)
      const got = await llm.completeIds(ids, { ...greedy, maxTokens })
      assert.ok(want.ids.length > 0)
      assert.deepEqual(got.ids, want.ids)
      assert.equal(got.content, want.text)
      assert.equal(got.finishReason, want.finish_reason)
      assert.equal(got.usage.promptTokens, want.usage.prompt_tokens)
    })
  }

  it('chat equals completeIds over the same rendered prompt', async () => {
    // Llama 2's template: BOS "[INST] {user} [/INST]"
    const messages = [{ role: 'user', content: 'Name three colours.' }]
    const ids = [1, ...llm.tokenize('[INST] Name three colours. [/INST]')]
    const a = await llm.chat(messages, { ...greedy, maxTokens: 16 })
    const b = cli(dir, ids, 16)
    assert.equal(a.usage.promptTokens, ids.length)
    assert.deepEqual(a.ids, b.ids)
  })

  // wgpu: a GPU, or lavapipe (mesa-vulkan-drivers) on CI; skips where no adapter exists
  it('is token-identical on wgpu, with concurrent calls', async (t) => {
    let gpu
    try {
      gpu = await Llama.load(dir, { backend: 'wgpu' })
    } catch (e) {
      if (e.code !== 'DEVICE') throw e
      t.skip(`no wgpu adapter: ${e.message}`)
      return
    }
    t.diagnostic(gpu.device)
    const ids = [1, ...llm.tokenize('The quick brown fox jumps over')]
    const want = cli(dir, ids, 16, 'wgpu')
    const opts = { ...greedy, maxTokens: 16 }
    const [a, b] = await Promise.all([gpu.completeIds(ids, opts), gpu.chat([{ role: 'user', content: 'Hi' }], opts)])
    assert.deepEqual(a.ids, want.ids)
    assert.deepEqual((await gpu.chat([{ role: 'user', content: 'Hi' }], opts)).ids, b.ids)
  })
})
