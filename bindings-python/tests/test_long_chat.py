"""Long conversations never dead-end (a session drops its oldest turns when the context
fills), max_tokens is a cap rather than a reservation, and the `error` policy still errors
with the sizes."""

import pytest
import yangtuo

from conftest import GREEDY


@pytest.fixture(scope="module")
def small(model_dir):
    return yangtuo.Llama(str(model_dir), backend="cpu", n_ctx=96)


def test_a_200_turn_session_never_errors(small):
    s = small.session(system="You are a helpful assistant.")
    dropped = 0
    for i in range(200):
        r = s.chat(f"第{i}个问题：羊驼吃什么？", max_tokens=1024, **GREEDY)
        dropped += r.dropped_turns
        msgs = s.messages
        assert msgs[0]["role"] == "system"
        # the prompt that ran is the template over the turns kept
        assert r.usage.prompt_tokens == len(small.apply_chat_template(msgs[:-1]))
        assert r.usage.total_tokens <= 96
    assert dropped > 0


def test_max_tokens_is_a_cap_and_length_when_the_context_fills(small):
    r = small.chat([{"role": "user", "content": "讲一个故事"}], max_tokens=10_000, **GREEDY)
    if r.finish_reason == "length":
        assert r.usage.total_tokens == 96


def test_one_shot_chat_errors_by_default_and_truncates_when_asked(small):
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"问题{i}"}, {"role": "assistant", "content": "回答" * 3}]
    history.append({"role": "user", "content": "最后一个问题"})
    with pytest.raises(yangtuo.ContextLengthError) as e:
        small.chat(history, max_tokens=8, **GREEDY)
    assert e.value.context == 96 and e.value.prompt_tokens > 96
    r = small.chat(history, max_tokens=8, context_overflow="truncate-oldest", **GREEDY)
    assert r.dropped_turns > 0
    with pytest.raises(yangtuo.ContextLengthError):
        small.session().chat("咖啡 " * 200, max_tokens=1, context_overflow="error")
