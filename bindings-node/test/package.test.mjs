// The npm tarballs as users get them (scripts/pack.mjs: `yangtuo`, JavaScript only, and
// `yangtuo-linux-x64-gnu` with the prebuilt addon) install into a separate project with no
// Rust toolchain on PATH, where both `require('yangtuo')` and `import { Llama } from
// 'yangtuo'` load a model.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { after, before, describe, it } from 'node:test'
import { makeModel, missing, pkgDir } from './helpers.mjs'

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
// what a user's shell has: no ~/.cargo/bin
const bare = { ...process.env, PATH: '/usr/local/bin:/usr/bin:/bin' }
const listing = (tgz) => execFileSync('tar', ['-tzf', tgz], { encoding: 'utf8' }).trim().split('\n').map((p) => p.replace(/^package\//, ''))

describe('the npm packages', () => {
  let work
  let app
  let model = null

  before((t) => {
    work = mkdtempSync(join(tmpdir(), 'yangtuo-pack-'))
    const [main, ...platforms] = execFileSync(process.execPath, [join(pkgDir, 'scripts', 'pack.mjs'), work], { encoding: 'utf8' }).trim().split('\n')
    const paths = listing(main)
    for (const p of ['lib/index.js', 'lib/index.mjs', 'lib/index.d.ts', 'index.js', 'index.d.ts', 'package.json']) {
      assert.ok(paths.includes(p), `${p} is not in ${basename(main)}: ${paths}`)
    }
    assert.ok(!paths.some((p) => p.endsWith('.node') || p.startsWith('src/') || p.startsWith('test/')), `${paths}`)
    const linux = platforms.find((p) => basename(p).startsWith('yangtuo-linux-x64-gnu-'))
    assert.ok(linux, `no linux-x64-gnu package among ${platforms}`)
    assert.ok(listing(linux).includes('yangtuo.linux-x64-gnu.node'))
    t.diagnostic?.(`${basename(main)} ${statSync(main).size} bytes, ${basename(linux)} ${statSync(linux).size} bytes`)

    app = join(work, 'app')
    execFileSync('mkdir', ['-p', app])
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
    // the other platforms' packages are optional and not published here: npm skips them
    execFileSync(npm, ['install', '--no-audit', '--no-fund', '--offline', main, linux], { cwd: app, stdio: 'pipe', env: bare })
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
    const out = execFileSync(process.execPath, [file], { cwd: app, encoding: 'utf8', env: { ...bare, MODEL: model ?? '' } })
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
