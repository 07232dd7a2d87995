// What the browser suites share: paths, the random tiny models, headless Chromium, and
// running a function in a page with the module imported.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const pkgRoot = path.resolve(here, '..');
export const repo = path.resolve(pkgRoot, '..');
const target = process.env.CARGO_TARGET_DIR ?? path.join(os.homedir(), '.cache', 'yangtuo-target');
export const makeModelBin = process.env.YANGTUO_MAKE_MODEL ?? path.join(target, 'release', 'make-model');
export const cli = path.join(target, 'release', 'yangtuo');
const shared = process.env.YANGTUO_SHARED ?? path.join(repo, 'tests', 'data');
export const tokenizerDir = path.join(shared, 'tokenizers', 'llama2');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
export const QUESTION = '咖啡的作用是什么？';

const BASE_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu-sandbox', '--no-first-run', '--disable-background-networking'];
/** Chromium with WebGPU (SwiftShader here, without shader-f16). */
export const WEBGPU = [...BASE_FLAGS, '--enable-unsafe-webgpu'];
/** Chromium as Firefox or Safari are for many users: no WebGPU at all. */
export const NO_WEBGPU = [...BASE_FLAGS, '--disable-features=WebGPU,Vulkan'];

export function checkPrerequisites() {
  for (const [what, p] of [['pkg/ (run scripts/build-wasm.sh)', path.join(pkgRoot, 'pkg', 'yangtuo_wasm.js')], ['make-model', makeModelBin], ['the yangtuo CLI', cli], ['tests/data tokenizers', path.join(tokenizerDir, 'tokenizer.model')], ['chromium', chromiumPath]]) {
    assert.ok(fs.existsSync(p), `missing ${what}: ${p}`);
  }
}

/** A random model folder at `out` (make-model's flags as an object), with the Llama 2 tokenizer. */
export function makeModel(out, shape) {
  const flags = Object.entries(shape).flatMap(([k, v]) => [`--${k}`, String(v)]);
  execFileSync(makeModelBin, ['--out', out, ...flags, '--tokenizer', tokenizerDir], { stdio: 'inherit' });
  return out;
}

export const TINY = { hidden: 64, intermediate: 256, layers: 2, heads: 4, 'kv-heads': 2, vocab: 32000, dtype: 'f16', seed: 3 };

export function quantize(from, to, type) {
  execFileSync(cli, ['quantize', from, to, '--type', type], { stdio: 'inherit' });
  return to;
}

/** The native CLI's greedy chat answer to `question` on `model`. */
export function nativeAnswer(model, backend, question, maxTokens, extra = []) {
  const out = execFileSync(cli, ['chat', '--model', model, '--backend', backend, '--temperature', '0', '--max-tokens', String(maxTokens), ...extra], {
    input: `${question}\n/exit\n`,
    env: { ...process.env, YANGTUO_NO_F16: '1' },
  }).toString();
  return out.replace(/\n$/, '');
}

export async function launch(flags) {
  const browser = await chromium.launch({ executablePath: chromiumPath, args: flags });
  const page = await browser.newPage();
  page.on('console', (m) => ['error', 'warning'].includes(m.type()) && console.log(`[browser ${m.type()}]`, m.text()));
  return { browser, page };
}

/** Run `fn(y, args)` in `page` with the module imported as `y`. */
export function inPage(page, fn, args = {}) {
  return page.evaluate(
    async ([src, a]) => {
      const y = await import('/js/yangtuo.js');
      // eslint-disable-next-line no-new-func
      return new Function('y', 'a', `return (${src})(y, a);`)(y, a);
    },
    [fn.toString(), args],
  );
}

export const tempDir = (name) => fs.mkdtempSync(path.join(os.tmpdir(), `yangtuo-${name}-`));
