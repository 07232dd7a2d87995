// The browser package as web developers use it, in headless Chromium: the engine in a Web
// Worker (the page keeps painting), the CPU backend when there is no WebGPU, models by
// Hugging Face id from a server laid out as the Hub, a cache per model, an interrupted
// download resumed, and a model of a few hundred MB streamed into WebGPU with wasm memory
// staying small.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { serve } from './server.mjs';
import { NO_WEBGPU, QUESTION, TINY, WEBGPU, checkPrerequisites, cli, inPage, launch, makeModel, nativeAnswer, pkgRoot, quantize, tempDir } from './setup.mjs';
import { startServer } from '../../tests/requests/outcome.mjs';

let server, models, gpu, cpu;
const MIB = 2 ** 20;

before(async () => {
  checkPrerequisites();
  models = tempDir('engine');
  const tiny = makeModel(path.join(models, 'tiny'), TINY);
  quantize(tiny, path.join(models, 'tiny.q8_0.gguf'), 'q8_0');
  // the Hub: a GGUF repo with two quants, a safetensors repo, a gated one
  const hub = path.join(models, 'hub');
  const ggufRepo = path.join(hub, 'test-org', 'tiny-GGUF');
  fs.mkdirSync(ggufRepo, { recursive: true });
  fs.copyFileSync(path.join(models, 'tiny.q8_0.gguf'), path.join(ggufRepo, 'tiny.Q8_0.gguf'));
  quantize(tiny, path.join(ggufRepo, 'tiny.Q4_0.gguf'), 'q4_0');
  fs.writeFileSync(path.join(ggufRepo, 'README.md'), '# tiny\n');
  fs.cpSync(tiny, path.join(hub, 'test-org', 'tiny'), { recursive: true });
  // a few hundred MB: 220M weights at Q8_0
  const big = makeModel(path.join(models, 'big'), { hidden: 1024, intermediate: 2816, layers: 12, heads: 16, 'kv-heads': 16, vocab: 32000, dtype: 'f16', seed: 5 });
  quantize(big, path.join(models, 'big.q8_0.gguf'), 'q8_0');
  fs.rmSync(big, { recursive: true });
  server = await serve({ '/': pkgRoot, '/models/': models }, 0, { hub: { root: hub, gated: ['test-org/secret'] } });
  gpu = await launch(WEBGPU);
  cpu = await launch(NO_WEBGPU);
  for (const { page } of [gpu, cpu]) await page.goto(`${server.url}/demo/index.html`);
});

after(async () => {
  await gpu?.browser.close();
  await cpu?.browser.close();
  await server?.close();
  if (models) fs.rmSync(models, { recursive: true, force: true });
});

test('the engine in a Web Worker: the page keeps painting, and answers as native does', async (t) => {
  const r = await inPage(gpu.page, async (y, a) => {
    // frames the page paints while the worker loads and answers
    let frames = 0;
    let longest = 0;
    let last = performance.now();
    let painting = true;
    const tick = (now) => {
      frames++;
      longest = Math.max(longest, now - last);
      last = now;
      if (painting) requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
    const t0 = performance.now();
    let progress = 0;
    const worker = new Worker('/js/worker.js', { type: 'module' });
    const llm = await y.createWorkerEngine(worker, { model: '/models/tiny.q8_0.gguf', onProgress: () => progress++ });
    const msgs = [{ role: 'user', content: a.q }];
    const answer = await llm.chat(msgs, { temperature: 0, maxTokens: 16 });
    const deltas = [];
    for await (const d of llm.chatStream(msgs, { temperature: 0, maxTokens: 16 })) deltas.push(d);
    const elapsed = performance.now() - t0;
    painting = false;
    const ctl = new AbortController();
    let pieces = 0;
    let aborted = null;
    try {
      for await (const d of llm.chatStream(msgs, { signal: ctl.signal, maxTokens: 400, temperature: 0 })) if (d && ++pieces === 2) ctl.abort();
    } catch (e) {
      aborted = { name: e.name, code: e.code };
    }
    const s = llm.session({ system: 'be brief' });
    await s.chat('你好', { temperature: 0, maxTokens: 4 });
    const viaOnDelta = [];
    await s.chat('再说一次', { temperature: 0, maxTokens: 4, onDelta: (d) => viaOnDelta.push(d) });
    const openai = await llm.chat.completions.create({ messages: msgs, temperature: 0, max_tokens: 16 });
    let bad = null;
    try {
      await llm.chat(msgs, { topP: 2 });
    } catch (e) {
      bad = { code: e.code, message: e.message };
    }
    llm.terminate();
    return {
      device: llm.device, frames, longest, elapsed, progress, answer: answer.content, streamed: deltas.join(''), aborted, pieces,
      roles: s.messages.map((m) => m.role), onDelta: viaOnDelta.length, openai: openai.choices[0].message.content, bad,
    };
  }, { q: QUESTION });
  t.diagnostic(`${r.frames} frames in ${r.elapsed.toFixed(0)} ms of loading and answering in the worker; longest gap ${r.longest.toFixed(0)} ms`);
  assert.match(r.device, /wgpu/);
  assert.ok(r.progress > 5, 'progress crossed from the worker');
  // token-identical to native (and so to the main thread's, browser.test.mjs)
  assert.equal(r.answer, nativeAnswer(path.join(models, 'tiny.q8_0.gguf'), 'wgpu', QUESTION, 16));
  assert.equal(r.streamed, r.answer);
  assert.equal(r.openai, r.answer);
  assert.deepEqual(r.aborted, { name: 'AbortError', code: 'ABORTED' });
  assert.ok(r.pieces >= 2 && r.pieces < 10, `stopped within a token of the abort (${r.pieces} pieces)`);
  assert.deepEqual(r.roles, ['system', 'user', 'assistant', 'user', 'assistant']);
  assert.ok(r.onDelta > 0);
  assert.equal(r.bad.code, 'INVALID_ARG');
  assert.match(r.bad.message, /top_p/);
  // the page painted throughout: at least 10 frames a second, no gap of half a second
  assert.ok(r.frames >= r.elapsed / 100, `${r.frames} frames in ${r.elapsed.toFixed(0)} ms`);
  assert.ok(r.longest < 500, `a ${r.longest.toFixed(0)} ms gap between frames`);
});

/**
 * Where two greedy token streams part, and whether that is a near-tie: the reference's top
 * two log-probabilities there closer than `tie` (f32 sums in another order may flip such a
 * choice, and nothing else may).
 */
function compareGreedy(mine, ref, tie) {
  const a = mine.choices[0].logprobs.content;
  const b = ref.choices[0].logprobs.content;
  const n = Math.min(a.length, b.length);
  let at = 0;
  while (at < n && a[at].token === b[at].token) at++;
  const drift = Math.max(0, ...a.slice(0, at).map((t, i) => Math.abs(t.logprob - b[i].logprob)));
  if (at === n) return { at, drift, tie: true };
  const [first, second] = b[at].top_logprobs;
  return { at, drift, margin: first.logprob - second.logprob, tie: first.logprob - second.logprob < tie };
}

test('without WebGPU the CPU backend runs in wasm, as native cpu answers; in a worker too', async (t) => {
  const request = { messages: [{ role: 'user', content: QUESTION }], temperature: 0, max_tokens: 24, logprobs: true, top_logprobs: 2 };
  const r = await inPage(cpu.page, async (y, a) => {
    const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
    const msgs = a.request.messages;
    const llm = await y.Llama.load({ model: '/models/tiny.q8_0.gguf' });
    const out = await llm.chat(msgs, { temperature: 0, maxTokens: 16 });
    const answer = await llm.chat.completions.create(a.request);
    // in a worker, an abort reaches the CPU loop while it generates
    const w = await y.createWorkerEngine(new Worker('/js/worker.js', { type: 'module' }), { model: '/models/tiny.q8_0.gguf' });
    const inWorker = (await w.chat(msgs, { temperature: 0, maxTokens: 16 })).content;
    const ctl = new AbortController();
    let pieces = 0;
    let aborted = null;
    try {
      for await (const d of w.chatStream(msgs, { signal: ctl.signal, maxTokens: 2000, temperature: 0.8, seed: 1 })) if (d && ++pieces === 3) ctl.abort();
    } catch (e) {
      aborted = e.code;
    }
    w.terminate();
    return { adapter: !!adapter, device: llm.device, content: out.content, decode: out.decodeTokS, answer, inWorker, aborted, pieces, workerDevice: w.device };
  }, { request });
  t.diagnostic(`${r.device}: ${r.decode.toFixed(0)} tokens/s decoding the tiny model`);
  assert.equal(r.adapter, false, 'this browser has no WebGPU adapter');
  assert.match(r.device, /^cpu \(1 thread, wasm32 simd128\)$/);
  assert.equal(r.workerDevice, r.device);
  assert.equal(r.inWorker, r.content);
  assert.equal(r.aborted, 'ABORTED');
  assert.ok(r.pieces < 50, `the abort took ${r.pieces} pieces to land`);
  // Native cpu on x86-64 runs the AVX2/VNNI kernels of core/src/backend/cpu/q8, wasm candle's
  // portable ones: both quantize the activations to int8 blocks, native with an f32 scale per
  // block and candle with an f16 one (Q8_0), and sum in other orders. quant.rs bounds what
  // activation quantization moves at 1e-1 of the logits; measured here: log-probabilities
  // within 0.11. So the answers agree token for token until (if ever) native's top two are
  // closer than that.
  const { child, port } = await startServer(cli, ['--model', path.join(models, 'tiny.q8_0.gguf'), '--backend', 'cpu'], process.env);
  try {
    const native = await (await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(request) })).json();
    const c = compareGreedy(r.answer, native, 0.2);
    t.diagnostic(`wasm cpu vs native cpu: ${c.at} of ${request.max_tokens} tokens identical, max |Δlogprob| ${c.drift.toFixed(4)} before${c.margin === undefined ? '' : `; the native margin where they part: ${c.margin.toFixed(4)}`}`);
    assert.ok(c.drift < 0.2, `log-probabilities drifted by ${c.drift}`);
    assert.ok(c.tie, `parted at token ${c.at}, where native's top two were ${c.margin} apart`);
    assert.ok(c.at >= 8, `parted at token ${c.at}`);
  } finally {
    child.kill();
  }
});

test('models by Hugging Face id from a hub-like server, a cache per model, clear errors', async () => {
  const r = await inPage(cpu.page, async (y) => {
    await y.clearCache();
    const endpoint = `${location.origin}/hub`;
    const msgs = [{ role: 'user', content: '你好' }];
    const gguf = await y.Llama.load({ model: 'test-org/tiny-GGUF:q8_0', endpoint });
    const byUrl = await y.Llama.load({ model: '/models/tiny.q8_0.gguf', cache: false });
    const same = (await gguf.chat(msgs, { temperature: 0, maxTokens: 8 })).content === (await byUrl.chat(msgs, { temperature: 0, maxTokens: 8 })).content;
    const folder = await y.Llama.load({ model: 'test-org/tiny', endpoint });
    await y.Llama.load({ model: 'test-org/tiny-GGUF:Q4_0', endpoint, cache: 'opfs' });
    const errors = {};
    for (const [name, model] of [['quant', 'test-org/tiny-GGUF:Q5_K_M'], ['several', 'test-org/tiny-GGUF'], ['gated', 'test-org/secret'], ['missing', 'test-org/nothing']]) {
      try {
        await y.Llama.load({ model, endpoint });
      } catch (e) {
        errors[name] = { code: e.code, message: e.message };
      }
    }
    const listed = await y.listCachedModels();
    const deleted = await y.deleteCachedModel('test-org/tiny');
    const after = await y.listCachedModels();
    return { same, template: folder.template, errors, listed, deleted, after: after.map((m) => m.model) };
  });
  assert.ok(r.same, 'the same file by id and by URL answers alike');
  assert.equal(r.template, 'llama2');
  assert.equal(r.errors.quant.code, 'MODEL_LOAD');
  assert.match(r.errors.quant.message, /no GGUF file for quant `Q5_K_M`; the repo has: Q4_0 \(tiny\.Q4_0\.gguf\), Q8_0 \(tiny\.Q8_0\.gguf\)/);
  assert.match(r.errors.several.message, /pick one with `test-org\/tiny-GGUF:QUANT`/);
  assert.match(r.errors.gated.message, /gated or private \(HTTP 401\)/);
  assert.match(r.errors.missing.message, /no model repo `test-org\/nothing` \(HTTP 404\)/);
  const size = (p) => fs.statSync(path.join(models, p)).size;
  const byModel = Object.fromEntries(r.listed.map((m) => [m.model, m]));
  assert.equal(byModel['test-org/tiny-GGUF:q8_0'].bytes, size('tiny.q8_0.gguf'));
  assert.equal(byModel['test-org/tiny-GGUF:q8_0'].cache, 'cache');
  assert.equal(byModel['test-org/tiny-GGUF:Q4_0'].cache, 'opfs');
  assert.equal(byModel['test-org/tiny'].bytes, ['config.json', 'model.safetensors', 'tokenizer.model'].map((f) => size(path.join('tiny', f))).reduce((a, b) => a + b) + (fs.existsSync(path.join(models, 'tiny', 'tokenizer_config.json')) ? size('tiny/tokenizer_config.json') : 0));
  assert.ok(r.listed.every((m) => m.complete));
  assert.equal(r.deleted, true);
  assert.deepEqual(r.after.sort(), ['test-org/tiny-GGUF:Q4_0', 'test-org/tiny-GGUF:q8_0']);
  // a reload by id downloads nothing, not even the listing, from either store
  const before = new Map(server.counts);
  await cpu.page.reload();
  await inPage(cpu.page, async (y) => {
    const endpoint = `${location.origin}/hub`;
    await y.Llama.load({ model: 'test-org/tiny-GGUF:q8_0', endpoint });
    await y.Llama.load({ model: 'test-org/tiny-GGUF:Q4_0', endpoint, cache: 'opfs' });
    return true;
  });
  const fetched = [...server.counts].filter(([p, n]) => p.startsWith('/hub/') && n !== (before.get(p) ?? 0)).map(([p]) => p);
  assert.deepEqual(fetched, []);
});

test('a few hundred MB stream into WebGPU with wasm memory under 512 MiB; a broken download resumes', async (t) => {
  const file = '/models/big.q8_0.gguf';
  const size = fs.statSync(path.join(models, 'big.q8_0.gguf')).size;
  server.cut(file, 100 * MIB);
  const r = await inPage(gpu.page, async (y, a) => {
    await y.clearCache();
    let first = null;
    try {
      await y.Llama.load({ model: a.file });
    } catch (e) {
      first = { code: e.code, message: e.message };
    }
    const afterFailed = await y.wasmMemoryBytes();
    let peak = afterFailed;
    const t0 = performance.now();
    const llm = await y.Llama.load({ model: a.file, onProgress: () => y.wasmMemoryBytes().then((b) => (peak = Math.max(peak, b))) });
    const loadS = (performance.now() - t0) / 1000;
    peak = Math.max(peak, await y.wasmMemoryBytes());
    const one = await llm.completions.create({ prompt: 'hi', max_tokens: 1, temperature: 0 });
    return { first, afterFailed, peak, loadS, tokens: one.usage.completion_tokens, device: llm.device };
  }, { file });
  t.diagnostic(`${(size / MIB).toFixed(0)} MiB loaded in ${r.loadS.toFixed(1)} s (resumed) on ${r.device}; wasm memory peaked at ${(r.peak / MIB).toFixed(0)} MiB (${(r.afterFailed / MIB).toFixed(0)} MiB after the broken load)`);
  assert.equal(r.first?.code, 'MODEL_LOAD');
  assert.match(r.first.message, /broke off after .* load it again to resume/);
  // the second load asked only for what the cache lacked: from the last whole 32 MiB chunk
  assert.deepEqual(server.ranges.filter((x) => x.path === file).map((x) => x.range), [`bytes=${96 * MIB}-`]);
  assert.ok(r.peak < 512 * MIB, `wasm memory reached ${(r.peak / MIB).toFixed(0)} MiB`);
  assert.equal(r.tokens, 1);
});
