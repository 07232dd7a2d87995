"""Session: multi-turn chat that keeps its KV cache."""

import yangtuo
from conftest import GREEDY


def test_session_keeps_history_and_matches_a_fresh_chat(llm):
    s = llm.session(system="You are a helpful assistant.")
    assert isinstance(s, yangtuo.Session)
    assert s.messages == [{"role": "system", "content": "You are a helpful assistant."}]
    a1 = s.chat("你好", max_tokens=8, **GREEDY)
    a2 = s.chat("咖啡的作用是什么?", max_tokens=8, **GREEDY)
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert s.messages[2]["content"] == a1.content and s.messages[4]["content"] == a2.content
    assert len(s) == 5
    # the second turn reused the cached prefix, and answers as a fresh chat over the same history
    assert a2.timings.prefill_tokens < a2.usage.prompt_tokens
    fresh = llm.chat(s.messages[:-1], max_tokens=8, **GREEDY)
    assert fresh.ids == a2.ids


def test_session_stream_and_reset(llm):
    s = llm.session()
    assert s.messages == []
    whole = llm.chat([{"role": "user", "content": "hi"}], max_tokens=8, **GREEDY)
    deltas = s.chat("hi", max_tokens=8, stream=True, **GREEDY)
    assert "".join(deltas) == whole.content
    assert deltas.result.content == whole.content
    assert s.messages[-1] == {"role": "assistant", "content": whole.content}
    s.reset()
    assert s.messages == []
    assert s.chat("hi", max_tokens=8, **GREEDY).ids == whole.ids


def test_reset_keeps_the_system_prompt(llm):
    s = llm.session(system="S")
    s.chat("hi", max_tokens=2)
    s.reset()
    assert s.messages == [{"role": "system", "content": "S"}]


def test_a_turn_waits_for_an_open_stream(llm):
    s = llm.session()
    deltas = s.chat("one", max_tokens=6, stream=True, **GREEDY)
    second = s.chat("two", max_tokens=4, **GREEDY)  # runs after the first answer is complete
    first = "".join(deltas)
    assert [m["content"] for m in s.messages] == ["one", first, "two", second.content]


def test_a_closed_stream_keeps_the_partial_answer(llm):
    s = llm.session()
    with s.chat("hi", max_tokens=50, stream=True, **GREEDY) as deltas:
        first = next(deltas)
    assert s.messages[0] == {"role": "user", "content": "hi"}
    assert s.messages[1]["role"] == "assistant" and s.messages[1]["content"].startswith(first)
