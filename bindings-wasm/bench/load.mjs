// Load one GGUF in headless Chromium over WebGPU and report what issue 19 asks for: the
// load time, the wasm memory's peak (WebAssembly.Memory.buffer.byteLength), the peak
// resident memory of Chromium's renderer and GPU processes, and whether a token came out.
//   node bench/load.mjs MODEL.gguf [--backend webgpu|cpu] [--worker]
// scripts/bench-browser-7b.sh makes a Llama-2-7B-shaped Q4_0 file and runs this on it.
import fs from 'node:fs';
import path from 'node:path';
import { serve } from '../test/server.mjs';
import { WEBGPU, NO_WEBGPU, inPage, launch, pkgRoot } from '../test/setup.mjs';

const file = path.resolve(process.argv[2] ?? '');
if (!fs.existsSync(file)) throw new Error(`usage: node bench/load.mjs MODEL.gguf [--backend webgpu|cpu]`);
const backend = process.argv.includes('--backend') ? process.argv[process.argv.indexOf('--backend') + 1] : 'webgpu';
const MIB = 2 ** 20;

/** Resident set sizes (bytes) of Chromium's processes by type, from /proc. */
function chromiumRss() {
  const out = {};
  for (const pid of fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('chromium')) continue;
      const type = /--type=([a-z-]+)/.exec(cmd)?.[1] ?? 'browser';
      const rss = Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) * 1024;
      out[type] = Math.max(out[type] ?? 0, rss);
    } catch {
      // the process ended
    }
  }
  return out;
}

const server = await serve({ '/': pkgRoot, '/models/': path.dirname(file) });
const { browser, page } = await launch(backend === 'cpu' ? NO_WEBGPU : WEBGPU);
const peakRss = {};
const sampler = setInterval(() => {
  for (const [type, rss] of Object.entries(chromiumRss())) peakRss[type] = Math.max(peakRss[type] ?? 0, rss);
}, 250);
try {
  await page.goto(`${server.url}/demo/index.html`);
  page.setDefaultTimeout(0);
  const r = await inPage(page, async (y, a) => {
    await y.clearCache();
    let peak = await y.wasmMemoryBytes();
    const t0 = performance.now();
    const llm = await y.Llama.load({ model: a.url, backend: a.backend, cache: false, onProgress: () => y.wasmMemoryBytes().then((b) => (peak = Math.max(peak, b))) });
    const loadS = (performance.now() - t0) / 1000;
    peak = Math.max(peak, await y.wasmMemoryBytes());
    const t1 = performance.now();
    let token = null;
    try {
      const one = await llm.completions.create({ prompt: 'The capital of France is', max_tokens: 1, temperature: 0 });
      token = one.choices[0].text;
    } catch (e) {
      token = `failed: ${e.message}`;
    }
    return { loadS, peak, device: llm.device, tokenS: (performance.now() - t1) / 1000, token, after: await y.wasmMemoryBytes() };
  }, { url: `/models/${path.basename(file)}`, backend });
  const size = fs.statSync(file).size;
  const rss = Object.entries(peakRss).map(([t, b]) => `${t} ${(b / MIB).toFixed(0)} MiB`).join(', ');
  console.log(`| ${path.basename(file)} | ${(size / MIB).toFixed(0)} MiB | ${r.device} | ${r.loadS.toFixed(1)} s | ${(r.peak / MIB).toFixed(0)} MiB | ${rss} | ${JSON.stringify(r.token)} in ${r.tokenS.toFixed(1)} s |`);
} finally {
  clearInterval(sampler);
  await browser.close();
  await server.close();
}
