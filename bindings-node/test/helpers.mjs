// Test support: random tiny models written by the workspace's `make-model`, with the real
// Llama 2 tokenizer from tests/data. Tests skip when make-model is not built.
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { homedir, tmpdir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const pkgDir = resolve(dirname(fileURLToPath(import.meta.url)), '..')
export const repoDir = resolve(pkgDir, '..')
const targetDir = process.env.CARGO_TARGET_DIR || join(homedir(), '.cache', 'yangtuo-target')
export const makeModelBin = process.env.YANGTUO_MAKE_MODEL || join(targetDir, 'release', 'make-model')
export const cliBin = process.env.YANGTUO_CLI || join(targetDir, 'release', 'yangtuo')
export const sharedDir = process.env.YANGTUO_SHARED || resolve(repoDir, 'tests', 'data')
export const tokenizerDir = join(sharedDir, 'tokenizers', 'llama2')

/** Why the model tests cannot run here, or null. */
export function missing() {
  if (!existsSync(makeModelBin)) {
    return `make-model not found at ${makeModelBin} (cargo build --release -p yangtuo-tests --bins, or set YANGTUO_MAKE_MODEL)`
  }
  // test data outside the repository must be there: its absence fails the run, never skips it
  if (!existsSync(join(tokenizerDir, 'tokenizer.model'))) {
    throw new Error(`the Llama 2 tokenizer is not at ${tokenizerDir} (tests/data is missing from the repository)`)
  }
  return null
}

const made = []
process.on('exit', () => made.forEach((d) => rmSync(d, { recursive: true, force: true })))

/** Shapes: `tiny` is fast; `slow` takes milliseconds per token, for timing-sensitive tests. */
const shapes = {
  tiny: ['--hidden', '64', '--intermediate', '160', '--layers', '2', '--heads', '4', '--kv-heads', '2'],
  slow: ['--hidden', '512', '--intermediate', '1376', '--layers', '4', '--heads', '8', '--kv-heads', '4'],
}

/** Write a random model folder (vocab 32000, f16, the real tokenizer) and return its path. */
export function makeModel(shape = 'tiny', seed = 1) {
  const dir = mkdtempSync(join(tmpdir(), `yangtuo-node-${shape}-`))
  made.push(dir)
  execFileSync(
    makeModelBin,
    ['--out', dir, ...shapes[shape], '--vocab', '32000', '--dtype', 'f16', '--seed', String(seed), '--tokenizer', tokenizerDir],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  )
  return dir
}

export const greedy = Object.freeze({ temperature: 0 })

/** Await a promise expected to reject; return the error. */
export async function rejection(promise) {
  try {
    await promise
  } catch (e) {
    return e
  }
  throw new Error('expected a rejection')
}

/** Collect a stream's deltas. */
export async function collect(iterable) {
  const out = []
  for await (const d of iterable) out.push(d)
  return out
}
