"""chat, generate, streaming, tokenization and the result shapes."""

import json

import yangtuo
from conftest import GREEDY, USER


def test_chat_result_is_an_openai_dict_and_an_object(llm, greedy_answer):
    r = greedy_answer
    assert isinstance(r, yangtuo.ChatResult) and isinstance(r, dict)
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    assert r["choices"][0]["message"] == {"role": "assistant", "content": r.content}
    assert r["choices"][0]["finish_reason"] == r.finish_reason == "length"
    assert r["usage"]["total_tokens"] == r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.completion_tokens == len(r.ids) == 16
    assert r.usage.prompt_tokens == len(llm.apply_chat_template(USER))
    assert r.content and r.text == r.content
    assert r.timings.decode_tokens == 15 and r.timings.ttft_s > 0 and r.timings.decode_tok_s > 0
    json.loads(json.dumps(r))  # plain JSON, as an OpenAI client would log it


def test_greedy_is_deterministic_and_matches_detokenize(llm, greedy_answer):
    again = llm.chat(USER, max_tokens=16, **GREEDY)
    assert again.ids == greedy_answer.ids and again.content == greedy_answer.content
    assert llm.detokenize(greedy_answer.ids) == greedy_answer.content


def test_stream_concatenates_to_the_answer(llm, greedy_answer):
    deltas = llm.chat(USER, max_tokens=16, stream=True, **GREEDY)
    assert isinstance(deltas, yangtuo.TextStream)
    pieces = list(deltas)
    assert all(isinstance(p, str) and p for p in pieces) and len(pieces) > 1
    assert "".join(pieces) == greedy_answer.content
    assert deltas.result is not None and deltas.result.ids == greedy_answer.ids


def test_seeded_sampling_streams_the_same_answer(llm):
    kw = {"max_tokens": 12, "temperature": 1.0, "top_p": 0.95, "seed": 1234}
    full = llm.chat(USER, **kw)
    assert full.content == llm.chat(USER, **kw).content
    assert "".join(llm.chat(USER, stream=True, **kw)) == full.content
    others = {llm.chat(USER, **{**kw, "seed": s}).content for s in range(3)}
    assert len(others) > 1, "different seeds should give different answers"


def test_sampling_parameters_are_accepted(llm):
    r = llm.chat(USER, max_tokens=4, temperature=0.8, top_p=0.5, top_k=5, min_p=0.05, repetition_penalty=1.2, seed=7)
    assert r.usage.completion_tokens == 4


def test_stop_sequence_ends_the_answer_before_it(llm):
    full = llm.chat(USER, max_tokens=24, **GREEDY).content
    stop = full[len(full) // 2 :][:3]
    r = llm.chat(USER, max_tokens=24, stop=stop, **GREEDY)
    assert r.finish_reason == "stop"
    assert r.content == full[: full.index(stop)]
    assert llm.chat(USER, max_tokens=24, stop=[stop, "zzzz"], **GREEDY).content == r.content


def test_generate_text_and_ids(llm):
    r = llm.generate("The capital of France is", max_tokens=8, **GREEDY)
    assert isinstance(r, yangtuo.CompletionResult)
    assert r["object"] == "text_completion" and r["choices"][0]["text"] == r.text
    assert len(r.ids) == 8 and r.finish_reason == "length"
    # text gets BOS prepended; ids are used as given
    ids = [1, *llm.tokenize("The capital of France is")]
    assert llm.generate(ids, max_tokens=8, **GREEDY).ids == r.ids
    assert "".join(llm.generate(ids, max_tokens=8, stream=True, **GREEDY)) == r.text


def test_tokenize_roundtrip(llm):
    text = "Hello, 世界! 咖啡"
    ids = llm.tokenize(text)
    assert all(isinstance(i, int) for i in ids) and ids
    assert llm.detokenize(ids) == text
    assert llm.tokenize("Hello") == [15043]  # the real Llama 2 tokenizer


def test_apply_chat_template_is_llama2(llm):
    ids = llm.apply_chat_template([{"role": "system", "content": "S"}, *USER])
    assert ids[0] == 1
    assert llm.detokenize(ids[1:]).startswith("[INST] <<SYS>>\nS\n<</SYS>>\n\n")


def test_properties(llm):
    assert llm.n_ctx == 512
    assert llm.n_vocab == 32000
    assert llm.template == "llama2"
    assert isinstance(llm.device, str) and llm.device
    assert "Llama(" in repr(llm)


def test_closing_a_stream_early_leaves_the_model_usable(llm, greedy_answer):
    with llm.chat(USER, max_tokens=200, stream=True, **GREEDY) as deltas:
        first = next(deltas)
    assert greedy_answer.content.startswith(first)
    assert list(deltas) == []  # closed
    for d in llm.chat(USER, max_tokens=200, stream=True, **GREEDY):
        break  # dropped mid-stream
    assert llm.chat(USER, max_tokens=16, **GREEDY).ids == greedy_answer.ids


def test_template_and_quantize_options(model_dir):
    q = yangtuo.Llama(model_dir, backend="cpu", quantize="q8_0", template="llama2-chinese", progress=False)
    assert q.template == "llama2-chinese"
    r = q.chat(USER, max_tokens=4, **GREEDY)
    assert r.usage.completion_tokens == 4
    assert q.detokenize(q.apply_chat_template(USER)[1:]).startswith("Human: ")


def test_progress_callback(model_dir):
    seen = []
    yangtuo.Llama(model_dir, backend="cpu", progress=lambda done, total, tensor: seen.append((done, total, tensor)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(isinstance(t, str) for _, _, t in seen)
    assert [d for d, _, _ in seen] == sorted(d for d, _, _ in seen)


def test_pathlike_model(model_dir):
    assert yangtuo.Llama(model_dir, backend="cpu", progress=False).n_ctx == 512
