"""The GIL is released while the model runs; concurrent calls are safe; Ctrl-C stops a
generation within a token and leaves the model usable."""

import _thread
import signal
import threading
import time

import pytest
import yangtuo
from conftest import GREEDY, USER

LONG = {"max_tokens": 3000, **GREEDY}


def test_other_python_threads_run_during_a_chat(long_llm):
    # Count the other thread's ticks that fall strictly inside the call. With the GIL held
    # for the whole call there could be at most one (a switch between reading the clock
    # and entering chat); a count is used rather than a rate because the CPU backend keeps
    # every core busy and the OS decides how often the ticker gets one.
    ticks: list[float] = []
    running = True

    def tick():
        while running:
            ticks.append(time.monotonic())
            time.sleep(0.001)

    t = threading.Thread(target=tick)
    t.start()
    try:
        time.sleep(0.05)
        t0 = time.monotonic()
        r = long_llm.chat(USER, max_tokens=300, **GREEDY)
        t1 = time.monotonic()
    finally:
        running = False
        t.join()
    assert r.usage.completion_tokens == 300
    inside = sum(t0 < x < t1 for x in ticks)
    assert inside >= 5, f"another thread ran only {inside} times in {t1 - t0:.3f}s of chat: is the GIL held?"


def test_concurrent_chats_match_the_single_threaded_answer(llm, greedy_answer):
    results: dict[int, yangtuo.ChatResult] = {}
    errors = []

    def run(i):
        try:
            results[i] = llm.chat(USER, max_tokens=16, **GREEDY)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 2
    for r in results.values():
        assert r.ids == greedy_answer.ids and r.content == greedy_answer.content


def test_concurrent_streams_and_sessions(llm, greedy_answer):
    out: dict[str, str] = {}

    def stream():
        out["stream"] = "".join(llm.chat(USER, max_tokens=16, stream=True, **GREEDY))

    def session():
        out["session"] = llm.session().chat(USER[0]["content"], max_tokens=16, **GREEDY).content

    threads = [threading.Thread(target=stream), threading.Thread(target=session)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert out == {"stream": greedy_answer.content, "session": greedy_answer.content}


def _interrupt_after(seconds: float, how: str) -> threading.Timer:
    # A shell starts background jobs with SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: install it, so the test does not depend on how it was run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if how == "signal":
        fire = lambda: signal.raise_signal(signal.SIGINT)  # a real SIGINT to the process
    else:
        fire = _thread.interrupt_main
    t = threading.Timer(seconds, fire)
    t.start()
    return t


@pytest.mark.parametrize("how", ["signal", "interrupt_main"])
def test_ctrl_c_stops_a_chat_and_the_model_stays_usable(long_llm, how):
    expected = long_llm.chat(USER, max_tokens=12, **GREEDY)
    timer = _interrupt_after(0.5, how)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        long_llm.chat(USER, **LONG)
    elapsed = time.monotonic() - t0
    timer.join()
    assert elapsed < 5, f"Ctrl-C took {elapsed:.1f}s to stop the generation"
    again = long_llm.chat(USER, max_tokens=12, **GREEDY)
    assert again.ids == expected.ids


def test_ctrl_c_stops_a_stream(long_llm):
    expected = long_llm.chat(USER, max_tokens=12, **GREEDY)
    deltas = long_llm.chat(USER, stream=True, **LONG)
    timer = _interrupt_after(0.5, "signal")
    got = []
    with pytest.raises(KeyboardInterrupt):
        got.extend(deltas)
    timer.join()
    assert got and len(got) < 3000
    assert list(deltas) == [] and deltas.result is None  # the interrupted stream is over
    assert long_llm.chat(USER, max_tokens=12, **GREEDY).ids == expected.ids


def test_ctrl_c_in_a_session_discards_the_turn(long_llm):
    s = long_llm.session()
    s.chat("hi", max_tokens=4, **GREEDY)
    timer = _interrupt_after(0.5, "signal")
    with pytest.raises(KeyboardInterrupt):
        s.chat("tell me a long story", **LONG)
    timer.join()
    assert [m["role"] for m in s.messages] == ["user", "assistant"]
    fresh = long_llm.chat([*s.messages, {"role": "user", "content": "again"}], max_tokens=6, **GREEDY)
    assert s.chat("again", max_tokens=6, **GREEDY).ids == fresh.ids


@pytest.fixture(scope="module")
def batched_llm(model_dir):
    return yangtuo.Llama(model_dir, backend="cpu", n_ctx=4096, parallel=4, progress=False)


def test_parallel_batches_concurrent_chats_with_the_answers_of_one_at_a_time(llm, batched_llm):
    # greedy and seeded requests of several lengths, six threads on four batch places:
    # each answer equals the same request on the unbatched model
    asks = [
        ([{"role": "user", "content": q}], dict(max_tokens=8 + 4 * i, **(GREEDY if i % 2 == 0 else {"temperature": 0.8, "seed": i})))
        for i, q in enumerate(["你好", "羊驼吃什么？", "hi", "写一首关于长城的诗", "1+1=?", "Tell me about Peru."])
    ]
    want = [llm.chat(m, **kw) for m, kw in asks]
    got: dict[int, yangtuo.ChatResult] = {}
    errors = []

    def run(i):
        try:
            got[i] = batched_llm.chat(asks[i][0], **asks[i][1])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(got) == len(asks)
    for i, w in enumerate(want):
        assert got[i].ids == w.ids and got[i].content == w.content, f"request {i}"
    steps, sequences = batched_llm.batch_stats
    assert sequences > steps, "some forward passes carried several chats"
    assert llm.batch_stats is None


def test_parallel_checks_its_value(model_dir):
    with pytest.raises(yangtuo.InvalidArgumentError):
        yangtuo.Llama(model_dir, backend="cpu", parallel=0, progress=False)


def test_ctrl_c_stops_a_batched_chat(batched_llm):
    expected = batched_llm.chat(USER, max_tokens=12, **GREEDY)
    timer = _interrupt_after(0.5, "signal")
    with pytest.raises(KeyboardInterrupt):
        batched_llm.chat(USER, **LONG)
    timer.join()
    assert batched_llm.chat(USER, max_tokens=12, **GREEDY).ids == expected.ids


def test_an_absurd_thread_count_is_clamped_with_a_warning(model_dir):
    # RAYON_NUM_THREADS=100000 crashed candle's pool (issue 18); the module clamps it at import
    import subprocess
    import sys

    code = (
        "import warnings, yangtuo\n"
        f"llm = yangtuo.Llama({str(model_dir)!r}, backend='cpu')\n"
        "print(llm.generate([1, 2], max_tokens=2, temperature=0).usage.completion_tokens)\n"
    )
    env = {**__import__("os").environ, "RAYON_NUM_THREADS": "100000"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr
    assert "RuntimeWarning" in out.stderr and "RAYON_NUM_THREADS=100000" in out.stderr, out.stderr
