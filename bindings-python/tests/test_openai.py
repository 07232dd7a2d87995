"""llama-cpp-python's OpenAI-shaped calls: `create_chat_completion` and `create_completion`
return OpenAI's dicts (chunks when streamed), with the same greedy content as `chat()`, and
a field yangtuo does not implement raises `InvalidArgumentError` naming it."""

import pytest
import yangtuo

from conftest import GREEDY, USER


def test_chat_completion_is_openai_shaped_and_matches_chat(llm):
    r = llm.create_chat_completion(messages=USER, max_tokens=16, **GREEDY)
    want = llm.chat(USER, max_tokens=16, **GREEDY)
    assert r["object"] == "chat.completion"
    assert r["id"].startswith("chatcmpl-")
    assert isinstance(r["created"], int)
    choice = r["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": want.content}
    assert choice["finish_reason"] == want["choices"][0]["finish_reason"]
    assert r["usage"]["prompt_tokens"] == want["usage"]["prompt_tokens"]
    assert r["usage"]["completion_tokens"] == want["usage"]["completion_tokens"]
    assert r["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
    assert r["timings"]["decode_tokens"] >= 0


def test_streamed_chunks_concatenate_to_the_answer(llm):
    whole = llm.create_chat_completion(messages=USER, max_tokens=16, **GREEDY)
    chunks = list(llm.create_chat_completion(messages=USER, max_tokens=16, stream=True, **GREEDY))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert len({c["id"] for c in chunks}) == 1


def test_include_usage_adds_a_last_chunk(llm):
    chunks = list(
        llm.create_chat_completion(
            messages=USER, max_tokens=4, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] >= 1
    assert all(c["usage"] is None for c in chunks[:-1])


def test_llama_cpp_python_style_call(llm):
    # code written for llama_cpp.Llama, unchanged
    out = llm.create_chat_completion(
        messages=USER, max_tokens=8, temperature=0.2, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.1, seed=7,
        stop=["\n\n"], stream=False, response_format=None, tools=None,
    )
    assert out["choices"][0]["message"]["role"] == "assistant"
    again = llm.create_chat_completion(
        messages=USER, max_tokens=8, temperature=0.2, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.1, seed=7,
        stop=["\n\n"],
    )
    assert again["choices"][0]["message"] == out["choices"][0]["message"]


def test_completion_matches_generate(llm):
    r = llm.create_completion("咖啡的作用是", max_tokens=8, **GREEDY)
    assert r["object"] == "text_completion"
    assert r["choices"][0]["text"] == llm.generate("咖啡的作用是", max_tokens=8, **GREEDY).text
    assert llm("咖啡的作用是", max_tokens=8, **GREEDY)["choices"][0]["text"] == r["choices"][0]["text"]
    text = "".join(c["choices"][0]["text"] for c in llm.create_completion("咖啡的作用是", max_tokens=8, stream=True, **GREEDY))
    assert text == r["choices"][0]["text"]


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("frobnicate", 1, "not a supported field"),
        ("n", 2, "must be 1"),
        ("top_logprobs", 2, "logprobs: true"),
        ("response_format", {"type": "xml"}, "response_format"),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}, "response_format"),
        ("seed", -2, "random seed"),
        ("temperature", "hot", "temperature"),
        ("max_tokens", 0, "at least 1"),
    ],
)
def test_bad_fields_raise_naming_the_field(llm, field, value, words):
    with pytest.raises(yangtuo.InvalidArgumentError) as e:
        llm.create_chat_completion(messages=USER, **{field: value})
    assert field in str(e.value) and words in str(e.value)


def test_logprobs_as_llama_cpp_python(llm):
    r = llm.create_chat_completion(messages=USER, max_tokens=4, logprobs=True, top_logprobs=2, **GREEDY)
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"]
    assert all(len(t["top_logprobs"]) == 2 and t["top_logprobs"][0]["logprob"] == t["logprob"] for t in content)
    c = llm.create_completion("咖啡的作用是", max_tokens=4, logprobs=2, **GREEDY)
    lp = c["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(lp["text_offset"]) == c["usage"]["completion_tokens"]


def test_seed_minus_one_is_random_not_an_error(llm):
    r = llm.create_chat_completion(messages=USER, max_tokens=2, seed=-1, temperature=1.0)
    assert r["choices"][0]["message"]["role"] == "assistant"


def test_bad_messages_raise_template_errors(llm):
    with pytest.raises(yangtuo.TemplateError):
        llm.create_chat_completion(messages=[{"role": "wizard", "content": "hi"}])


def test_structured_output_satisfies_its_schema(llm):
    """response_format with a JSON Schema, as llama-cpp-python and OpenAI take it: the random
    model's answers parse and pass the reference validator, greedy and seeded."""
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["北京", "上海", "Lima"]}, "days": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "trip", "schema": schema, "strict": True}}
    for kw in (GREEDY, {"temperature": 1.0, "seed": 4}):
        r = llm.create_chat_completion(messages=USER, max_tokens=200, response_format=fmt, **kw)
        assert r["choices"][0]["finish_reason"] == "stop", r
        jsonschema.validate(json.loads(r["choices"][0]["message"]["content"]), schema)
