// The demo chat page: load a model with progress, then a streaming conversation with a
// system prompt, tokens/s and a stop button. The engine runs in a Web Worker, so the page
// stays responsive. Query parameter ?model=URL (or a Hugging Face id) pre-fills the box.
import { createWorkerEngine } from '../js/yangtuo.js';

const $ = (id) => document.getElementById(id);
let llm = null;
let session = null;
let controller = null;

const params = new URLSearchParams(location.search);
if (params.get('model')) $('model-url').value = params.get('model');
const maxTokens = Number(params.get('max') ?? 512);

function add(role, text) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  $('chat').append(div);
  div.scrollIntoView({ block: 'end' });
  return div;
}

function busy(on) {
  $('send').disabled = on || !llm;
  $('input').disabled = !llm;
  $('stop').disabled = !on;
  $('load-btn').disabled = on;
}

$('load-btn').addEventListener('click', async () => {
  const files = $('model-files').files;
  const model = files.length ? files : $('model-url').value.trim();
  busy(true);
  $('progress').hidden = false;
  try {
    llm?.terminate();
    llm = null;
    llm = await createWorkerEngine(new Worker(new URL('../js/worker.js', import.meta.url), { type: 'module' }), {
      model,
      onProgress: ({ loaded, total, tensor }) => {
        $('progress').max = total;
        $('progress').value = loaded;
        $('progress-text').textContent = `${(loaded / 2 ** 20).toFixed(1)} / ${(total / 2 ** 20).toFixed(1)} MiB · ${tensor}`;
      },
    });
    session = llm.session({ system: $('system').value.trim() || undefined });
    $('device').textContent = llm.device;
    $('progress-text').textContent = `loaded · ${llm.template} template · context ${llm.nCtx}`;
    document.body.dataset.state = 'ready';
  } catch (e) {
    add('error', `load failed: ${e.message}`);
    document.body.dataset.state = 'error';
  } finally {
    busy(false);
  }
});

// a new system prompt starts a new conversation
$('system').addEventListener('change', () => {
  if (llm) session = llm.session({ system: $('system').value.trim() || undefined });
});

$('composer').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const text = $('input').value.trim();
  if (!text || !session) return;
  $('input').value = '';
  add('user', text);
  const out = add('assistant', '');
  controller = new AbortController();
  busy(true);
  document.body.dataset.state = 'answering';
  const t0 = performance.now();
  let pieces = 0;
  try {
    for await (const d of session.chatStream(text, { signal: controller.signal, maxTokens })) {
      out.textContent += d;
      pieces++;
      const s = (performance.now() - t0) / 1000;
      $('speed').textContent = `${pieces} pieces · ${(pieces / s).toFixed(1)} tok/s`;
    }
    // the final figure counts real tokens, not text pieces
    const s = (performance.now() - t0) / 1000;
    const tokens = (await llm.tokenize(out.textContent)).length;
    $('speed').textContent = `${tokens} tokens · ${(tokens / s).toFixed(1)} tok/s`;
  } catch (e) {
    if (e.name === 'AbortError') out.textContent += ' [stopped]';
    else add('error', e.message);
  } finally {
    busy(false);
    document.body.dataset.state = 'ready';
  }
});

$('stop').addEventListener('click', () => controller?.abort());
