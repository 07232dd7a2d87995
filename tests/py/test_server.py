"""`yangtuo serve` through the official `openai` client (run by tests/tests/server.rs).

    python tests/py/test_server.py --base-url http://127.0.0.1:PORT/v1 --expected expected.json

`expected.json` holds the library's greedy answers: {"chat": {"messages", "max_tokens",
"text"}, "completion": {"prompt", "max_tokens", "text"}}. Checks: one non-streamed and one
streamed chat (greedy, equal to the library), a completion both ways, then a bounded load
test: 32 concurrent streamed chats, each with its own seed and prompt, all complete and each
streamed text equals the non-streamed answer for the same seed and prompt. Prints p50/p99.
Structured output (`response_format` with a JSON Schema) and tool-call arguments are validated
with `jsonschema`.
"""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
from openai import OpenAI

CONCURRENT = 32


def percentile(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def stream_chat(client, **kw):
    """The streamed text, the chunks, and the seconds until [DONE]."""
    t0 = time.perf_counter()
    chunks = list(client.chat.completions.create(stream=True, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--expected", required=True)
    a = ap.parse_args()
    exp = json.load(open(a.expected, encoding="utf-8"))
    client = OpenAI(base_url=a.base_url, api_key="not-needed", max_retries=0, timeout=300)

    models = client.models.list()
    model = models.data[0].id

    # one non-streamed and one streamed greedy chat, equal to the library's answer
    chat = exp["chat"]
    r = client.chat.completions.create(model=model, messages=chat["messages"], max_tokens=chat["max_tokens"], temperature=0)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant", r
    assert r.choices[0].message.content == chat["text"], (r.choices[0].message.content, chat["text"])
    assert r.usage.completion_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    text, chunks, _ = stream_chat(
        client, model=model, messages=chat["messages"], max_tokens=chat["max_tokens"], temperature=0,
        stream_options={"include_usage": True},
    )
    assert text == chat["text"], (text, chat["text"])
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [r.choices[0].finish_reason], finishes
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens, chunks[-1]
    assert len({c.id for c in chunks}) == 1
    print(f"chat: {r.usage.prompt_tokens} + {r.usage.completion_tokens} tokens, streamed in {len(chunks)} chunks")

    # a raw completion, both ways
    comp = exp["completion"]
    c = client.completions.create(model=model, prompt=comp["prompt"], max_tokens=comp["max_tokens"], temperature=0)
    assert c.object == "text_completion" and c.choices[0].text == comp["text"], (c.choices[0].text, comp["text"])
    streamed = "".join(x.choices[0].text for x in client.completions.create(
        model=model, prompt=comp["prompt"], max_tokens=comp["max_tokens"], temperature=0, stream=True) if x.choices)
    assert streamed == comp["text"], (streamed, comp["text"])

    # logprobs through the client's own types: chat's content list and the legacy lists
    r = client.chat.completions.create(model=model, messages=chat["messages"], max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens, (len(content), r.usage)
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == t.logprob, t
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
        assert bytes(t.bytes).decode("utf-8", "replace") and isinstance(t.token, str)
    streamed = [t for ch in client.chat.completions.create(
        model=model, messages=chat["messages"], max_tokens=6, temperature=0, logprobs=True, top_logprobs=3, stream=True)
        if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
    # the same tokens; values equal to float noise (this run's prompt KV came from the cache)
    assert [t.token for t in streamed] == [t.token for t in content]
    assert all(abs(s.logprob - t.logprob) < 1e-4 for s, t in zip(streamed, content))
    c = client.completions.create(model=model, prompt=comp["prompt"], max_tokens=6, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == c.usage.completion_tokens
    assert all(1 <= len(alts) <= 2 for alts in lp.top_logprobs), lp.top_logprobs

    # structured output: the random model's answers satisfy their schema, as the reference
    # `jsonschema` validates it, whole and streamed (the server's model is random: bounded schema)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"enum": ["羊驼", "猫", "dog"]}, "maxItems": 2},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    for seed in (1, 2):
        r = client.chat.completions.create(model=model, messages=chat["messages"], max_tokens=300, temperature=1.0,
                                           seed=seed, response_format=fmt)
        assert r.choices[0].finish_reason == "stop", r
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
        text, _, _ = stream_chat(client, model=model, messages=chat["messages"], max_tokens=300, temperature=1.0,
                                 seed=seed, response_format=fmt)
        assert text == r.choices[0].message.content, (text, r.choices[0].message.content)
    print(f"structured output: {r.choices[0].message.content}")

    # tool calls: the official client reads `tool_calls`, whole and streamed; the arguments
    # satisfy the tool's schema under `jsonschema`
    params = {"type": "object", "properties": {"city": {"enum": ["北京", "上海"]}, "days": {"type": "integer", "minimum": 1,
              "maximum": 7}}, "required": ["city", "days"]}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "天气预报", "parameters": params}}]
    for seed in (1, 2):
        kw = dict(model=model, messages=[{"role": "user", "content": "北京天气？"}], max_tokens=200, temperature=1.0,
                  seed=seed, tools=tools, tool_choice="required")
        r = client.chat.completions.create(**kw)
        assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None, r
        call = r.choices[0].message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather", call
        jsonschema.validate(json.loads(call.function.arguments), params)
        _, chunks, _ = stream_chat(client, **kw)
        streamed = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
        assert [(t.function.name, t.function.arguments) for t in streamed] == [(call.function.name, call.function.arguments)]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
    history = [{"role": "user", "content": "北京天气？"}, {"role": "assistant", "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "晴"}]
    r = client.chat.completions.create(model=model, messages=history, tools=tools, max_tokens=8, seed=3)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r
    print(f"tool call: {call.function.name}({call.function.arguments})")

    # the load test: 32 concurrent streamed chats, then the same requests whole
    def request(i):
        return dict(model=model, messages=[{"role": "user", "content": f"请求 {i}: 讲一个关于羊驼的故事。"}],
                    max_tokens=24 + i % 9, temperature=0.9, top_p=0.95, seed=1000 + i)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(lambda i: stream_chat(client, **request(i)), range(CONCURRENT)))
    wall = time.perf_counter() - t0
    assert len(results) == CONCURRENT
    latencies = [lat for _, _, lat in results]
    ids = set()
    for i, (text, chunks, _) in enumerate(results):
        assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length"), (i, chunks[-1:])
        ids.add(chunks[0].id)
    assert len(ids) == CONCURRENT, "every stream has its own id"
    with ThreadPoolExecutor(8) as pool:
        whole = list(pool.map(lambda i: client.chat.completions.create(**request(i)), range(CONCURRENT)))
    for i, ((text, _, _), w) in enumerate(zip(results, whole)):
        assert text == w.choices[0].message.content, f"request {i}: streamed {text!r} != whole {w.choices[0].message.content!r}"
    distinct = len({t for t, _, _ in results})
    print(f"load: {CONCURRENT} concurrent streamed chats in {wall:.2f} s, none lost or mixed ({distinct} distinct answers); "
          f"latency p50 {percentile(latencies, 50) * 1000:.0f} ms, p99 {percentile(latencies, 99) * 1000:.0f} ms")
    assert distinct > CONCURRENT // 2, "different seeds and prompts give different answers"
    return 0


if __name__ == "__main__":
    sys.exit(main())
