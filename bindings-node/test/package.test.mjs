// The packed tarball installs into a separate project, where both `require('yangtuo')` and
// `import { Llama } from 'yangtuo'` work and load a model.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { makeModel, missing, pkgDir } from './helpers.mjs'

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'

describe('the npm package', () => {
  let work
  let app
  let model = null

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'yangtuo-pack-'))
    const out = execFileSync(npm, ['pack', '--json', '--pack-destination', work], { cwd: pkgDir, encoding: 'utf8' })
    const [{ filename, files }] = JSON.parse(out)
    const paths = files.map((f) => f.path)
    for (const p of ['lib/index.js', 'lib/index.mjs', 'lib/index.d.ts', 'index.js', 'index.d.ts']) {
      assert.ok(paths.includes(p), `${p} is not in the tarball: ${paths}`)
    }
    assert.ok(paths.some((p) => p.endsWith('.node')), 'no native addon in the tarball')
    assert.ok(!paths.some((p) => p.startsWith('src/') || p.startsWith('test/')), `${paths}`)

    app = join(work, 'app')
    execFileSync('mkdir', ['-p', app])
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
    execFileSync(npm, ['install', '--no-audit', '--no-fund', '--offline', join(work, filename)], { cwd: app, stdio: 'pipe' })
    if (!missing()) model = makeModel('tiny')
  })

  after(() => rmSync(work, { recursive: true, force: true }))

  const script = (body) => `${body}
const model = process.env.MODEL
if (model) {
  Llama.load(model, { backend: 'cpu' }).then(async (llm) => {
    const r = await llm.chat([{ role: 'user', content: 'Hi' }], { temperature: 0, maxTokens: 3 })
    console.log(JSON.stringify({ kind: typeof Llama, tokens: llm.tokenize('Hello'), n: r.ids.length }))
  })
} else console.log(JSON.stringify({ kind: typeof Llama }))
`

  const run = (file, source) => {
    writeFileSync(join(app, file), source)
    const out = execFileSync(process.execPath, [file], { cwd: app, encoding: 'utf8', env: { ...process.env, MODEL: model ?? '' } })
    return JSON.parse(out.trim())
  }

  it("works with require('yangtuo')", () => {
    const r = run('main.cjs', script("const { Llama } = require('yangtuo')"))
    assert.equal(r.kind, 'function')
    if (model) assert.deepEqual([r.tokens, r.n], [[15043], 3])
  })

  it("works with import { Llama } from 'yangtuo'", () => {
    const r = run('main.mjs', script("import { Llama } from 'yangtuo'"))
    assert.equal(r.kind, 'function')
    if (model) assert.deepEqual([r.tokens, r.n], [[15043], 3])
  })

  it('ships types for the public API', () => {
    const r = run('types.cjs', "const fs = require('fs'); const p = require.resolve('yangtuo/package.json'); console.log(JSON.stringify(fs.readFileSync(require('path').join(p, '..', 'lib', 'index.d.ts'), 'utf8').includes('chatStream')))")
    assert.equal(r, true)
  })
})
