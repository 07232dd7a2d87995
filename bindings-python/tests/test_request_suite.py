"""The shared request set (tests/requests/openai.json), through `create_chat_completion` /
`create_completion` and through `yangtuo serve` on the same model: each case gives its
expected outcome, and the same outcome both ways (JSON shape, finish reason, greedy text)."""

import json
import re
import subprocess
import threading
import urllib.error
import urllib.request

import pytest
import yangtuo
from conftest import BACKEND, REPO, cli_binary

SUITE = json.loads((REPO / "tests" / "requests" / "openai.json").read_text(encoding="utf-8"))["cases"]


def outcome_of_answer(answer):
    """What must agree between front ends: the shape, the finish reason, the text."""
    choice = answer["choices"][0]
    logprobs = choice.get("logprobs")
    return {
        "object": answer["object"],
        "keys": sorted(answer),
        "choice_keys": sorted(choice),
        "finish_reason": choice["finish_reason"],
        "content": choice["message"]["content"] if "message" in choice else choice["text"],
        "logprob_tokens": [t["token"] for t in logprobs["content"]] if logprobs else None,
    }


def outcome_of_chunks(chunks):
    first = chunks[0]
    with_choices = [c for c in chunks if c["choices"]]
    return {
        "object": first["object"],
        "keys": sorted(first),
        "choice_keys": sorted(first["choices"][0]),
        "finish_reason": [c["choices"][0]["finish_reason"] for c in with_choices if c["choices"][0]["finish_reason"]],
        "content": "".join(c["choices"][0]["delta"].get("content") or "" for c in with_choices),
        "usage_last": chunks[-1].get("usage") is not None,
    }


def run_binding(llm, case):
    call = llm.create_chat_completion if case["endpoint"] == "chat" else llm.create_completion
    try:
        r = call(**case["request"])
        return outcome_of_chunks(list(r)) if case["request"].get("stream") else outcome_of_answer(r)
    except yangtuo.InvalidArgumentError as e:
        return {"error": e.name}
    except yangtuo.TemplateError:
        return {"error": "messages"}
    except TypeError as e:  # a required argument missing from the call
        return {"error": re.search(r"'(\w+)'", str(e)).group(1)}


def run_server(port, case):
    path = "/v1/chat/completions" if case["endpoint"] == "chat" else "/v1/completions"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(case["request"]).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            body = r.read().decode()
    except urllib.error.HTTPError as e:
        return {"error": json.loads(e.read())["error"]["param"]}
    if case["request"].get("stream"):
        events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        return outcome_of_chunks([json.loads(e) for e in events[:-1]])
    return outcome_of_answer(json.loads(body))


@pytest.fixture(scope="module")
def server(model_dir):
    p = subprocess.Popen(
        [str(cli_binary()), "serve", "--model", str(model_dir), "--backend", BACKEND, "--port", "0"],
        stderr=subprocess.PIPE, text=True, env={"RUST_LOG": "info", "PATH": "/usr/bin:/bin"},
    )
    port = None
    for line in p.stderr:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    assert port, "yangtuo serve did not start"
    # keep reading its log so it never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    yield port
    p.kill()
    p.wait()


@pytest.mark.parametrize("case", SUITE, ids=[c["name"] for c in SUITE])
def test_request_set(llm, server, case):
    mine = run_binding(llm, case)
    theirs = run_server(server, case)
    want = case["expect"]
    if "error" in want:
        assert mine == {"error": want["error"]}, mine
    else:
        assert mine.get("object") == want["object"], mine
    assert mine == theirs
