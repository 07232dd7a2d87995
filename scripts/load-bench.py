#!/usr/bin/env python3
"""Server load benchmark: N concurrent streamed chats with mixed prompt lengths against
`yangtuo serve` and, in the same run, llama.cpp's `llama-server` on the same GGUF file.

    python scripts/load-bench.py --model tiny.q4_0.gguf --yangtuo target/release/yangtuo \
        --llama-server ../llamacpp/build/bin/llama-server --streams 32 --parallel 8

Each server gets the same requests (fixed seeds, `ignore_eos`, `max_tokens` answers, so both
generate the same number of tokens), all sent at once; a request that fails or returns the
wrong number of tokens is counted, never dropped. Reports aggregate decode tok/s (answer
tokens over wall time), time to first token and inter-token latency (p50/p99), and each
server's peak RSS. Bounded in count (--streams) and time (--timeout). A benchmark, not a
test: it needs a built llama.cpp beside the project (never committed).
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx

TOPICS = ["羊驼", "长城", "咖啡", "the Andes", "熊猫", "rivers", "上海的历史", "tea", "计算机", "llamas in Peru"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(n: int, seed: int) -> list[str]:
    """Mixed lengths: from a few words to a few hundred tokens of context."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        context = " ".join(rng.choice(TOPICS) for _ in range(rng.choice([0, 4, 16, 64, 128])))
        out.append(f"{context}\n请详细介绍{topic}。" if context else f"请介绍{topic}。")
    return out


def system_prompt(a: argparse.Namespace) -> str:
    """The same for every request and server: fixed instructions of --system-words words."""
    rng = random.Random(12345)
    words = [rng.choice(TOPICS) for _ in range(a.system_words)]
    return ("你是一个乐于助人的助手。请参考：" + " ".join(words)) if words else ""


def percentile(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def peak_rss(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("nan")


async def one(client: httpx.AsyncClient, url: str, system: str, prompt: str, i: int, max_tokens: int) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    body = {
        "messages": messages + [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    t0 = time.monotonic()
    times = []
    usage = {}
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            return {"error": f"{r.status_code}: {(await r.aread())[:200]!r}"}
        # server-sent events end lines with \n; not str.splitlines (aiter_lines), which
        # also splits inside a JSON string at U+2028 or U+0085
        buf = b""
        async for data in r.aiter_bytes():
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                line = line.rstrip(b"\r")
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                usage = chunk.get("usage") or usage
                for c in chunk.get("choices", []):
                    if c.get("delta", {}).get("content"):
                        times.append(time.monotonic())
    if not times:
        return {"error": "no tokens"}
    gaps = [b - a for a, b in zip(times, times[1:])]
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft": times[0] - t0,
        "gaps": gaps,
        "pieces": len(times),
        "end": times[-1],
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached_tokens": details.get("cached_tokens", 0),
    }


async def drive(base: str, n: int, max_tokens: int, timeout: float, seed: int, system: str) -> dict:
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        t0 = time.monotonic()
        tasks = [one(client, url, system, p, i, max_tokens) for i, p in enumerate(prompts(n, seed))]
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)
        wall = time.monotonic() - t0
    ok = [r for r in results if isinstance(r, dict) and "error" not in r]
    failed = [r if isinstance(r, dict) else {"error": repr(r)} for r in results if not (isinstance(r, dict) and "error" not in r)]
    ttft = [r["ttft"] for r in ok]
    gaps = [g for r in ok for g in r["gaps"]]
    return {
        "ok": len(ok),
        "failed": len(failed),
        "errors": [f["error"] for f in failed][:3],
        # pieces are tokens for both servers on this model, except where a piece holds
        # several byte tokens of one character; max_tokens each is the intended count
        "aggregate_tok_s": len(ok) * max_tokens / wall,
        "wall_s": wall,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p99": percentile(ttft, 99),
        "itl_p50_ms": 1000 * percentile(gaps, 50),
        "itl_p99_ms": 1000 * percentile(gaps, 99),
        "prompt_tokens": sum(r["prompt_tokens"] for r in ok),
        "cached_tokens": sum(r["cached_tokens"] for r in ok),
    }


def wait_ready(base: str, proc: subprocess.Popen, limit: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {base} was not ready in {limit} s")


def run_server(name: str, cmd: list[str], port: int, a: argparse.Namespace) -> dict:
    base = f"http://127.0.0.1:{port}"
    log = open(f"/tmp/load-bench-{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(base, proc, 300)
        # warm-up, without the system prompt (which would leave it cached)
        asyncio.run(drive(base, min(4, a.streams), 8, a.timeout, a.seed + 1, ""))
        r = asyncio.run(drive(base, a.streams, a.max_tokens, a.timeout, a.seed, system_prompt(a)))
        r["peak_rss_gib"] = peak_rss(proc.pid)
        return r
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a GGUF file both servers load")
    p.add_argument("--yangtuo", required=True, help="the yangtuo binary")
    p.add_argument("--llama-server", help="llama.cpp's llama-server binary (skipped if not given)")
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--ctx", type=int, default=1024, help="context per sequence")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--system-words",
        type=int,
        default=0,
        help="every request starts with the same system prompt of this many words (an app's fixed instructions)",
    )
    a = p.parse_args()
    rows = {}
    port = free_port()
    rows["yangtuo"] = run_server(
        "yangtuo",
        [a.yangtuo, "serve", "--model", a.model, "--backend", "cpu", "--port", str(port), "--parallel", str(a.parallel), "--ctx", str(a.ctx)],
        port,
        a,
    )
    if a.llama_server:
        port = free_port()
        cmd = [a.llama_server, "-m", a.model, "--port", str(port), "-np", str(a.parallel), "-cb", "-c", str(a.ctx * a.parallel), "-t", str(a.threads)]
        rows["llama-server"] = run_server("llama-server", cmd, port, a)
    print(
        f"{a.streams} concurrent streamed chats, {a.max_tokens} tokens each (ignore_eos), --parallel {a.parallel}, "
        f"{a.threads} threads, a shared system prompt of {a.system_words} words"
    )
    print("| server | ok | failed | aggregate tok/s | TTFT p50 s | TTFT p99 s | ITL p50 ms | ITL p99 ms | wall s | peak RSS GiB | cached / prompt tokens |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(
            f"| {name} | {r['ok']} | {r['failed']} | {r['aggregate_tok_s']:.1f} | {r['ttft_p50']:.2f} | {r['ttft_p99']:.2f} "
            f"| {r['itl_p50_ms']:.0f} | {r['itl_p99_ms']:.0f} | {r['wall_s']:.1f} | {r['peak_rss_gib']:.2f} "
            f"| {r['cached_tokens']} / {r['prompt_tokens']} |"
        )
        if r["errors"]:
            print(f"  {name} errors: {r['errors']}", file=sys.stderr)


if __name__ == "__main__":
    main()
