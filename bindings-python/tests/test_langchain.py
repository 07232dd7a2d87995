"""yangtuo.langchain: Llama2 (an LLM) and ChatYangtuo (a chat model)."""

import pytest
from conftest import BACKEND, GREEDY, USER

pytest.importorskip("langchain_core", reason="the langchain extra is not installed: pip install 'yangtuo[langchain]'")

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.llms import LLM
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from yangtuo.langchain import ChatYangtuo, Llama2, to_yangtuo_messages

QUESTION = USER[0]["content"]


@pytest.fixture(scope="module")
def chat(llm):
    return ChatYangtuo(llm=llm, max_tokens=16, **GREEDY)


def test_llama2_is_an_llm_over_one_user_message(llm, greedy_answer):
    m = Llama2(llm=llm, max_tokens=16, **GREEDY)
    assert isinstance(m, LLM)
    assert m.invoke(QUESTION) == greedy_answer.content
    assert "".join(m.stream(QUESTION)) == greedy_answer.content
    chain = PromptTemplate.from_template("{q}") | m | StrOutputParser()
    assert chain.invoke({"q": QUESTION}) == greedy_answer.content


def test_llama2_loads_a_path_like_llama2_for_langchain(model_dir, greedy_answer):
    m = Llama2(model_name_or_path=str(model_dir), backend=BACKEND, progress=False, max_tokens=16, **GREEDY)
    assert m.invoke(QUESTION) == greedy_answer.content
    assert m.llm.n_ctx == 512


def test_chat_model_invoke(chat, greedy_answer):
    assert isinstance(chat, BaseChatModel)
    msg = chat.invoke([HumanMessage(QUESTION)])
    assert isinstance(msg, AIMessage) and msg.content == greedy_answer.content
    assert msg.usage_metadata["total_tokens"] == greedy_answer.usage.total_tokens
    assert msg.response_metadata["finish_reason"] == "length"
    assert chat.invoke(QUESTION).content == greedy_answer.content


def test_chat_model_stream(chat, greedy_answer):
    chunks = list(chat.stream([HumanMessage(QUESTION)]))
    assert "".join(c.content for c in chunks) == greedy_answer.content
    assert any(c.usage_metadata and c.usage_metadata["output_tokens"] == 16 for c in chunks)


def test_lcel_chain(chat, llm):
    prompt = ChatPromptTemplate.from_messages([("system", "You are a helpful assistant."), ("human", "{q}")])
    chain = prompt | chat | StrOutputParser()
    expected = llm.chat(
        [{"role": "system", "content": "You are a helpful assistant."}, *USER], max_tokens=16, **GREEDY
    ).content
    assert chain.invoke({"q": QUESTION}) == expected
    assert "".join(chain.stream({"q": QUESTION})) == expected


def test_roles_and_stop(chat, llm):
    msgs = [SystemMessage("S"), HumanMessage("a"), AIMessage("b"), HumanMessage("c")]
    assert to_yangtuo_messages(msgs) == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    full = chat.invoke(msgs).content
    stop = full[len(full) // 2 :][:3]
    assert chat.invoke(msgs, stop=[stop]).content == full[: full.index(stop)]
    call = AIMessage("", tool_calls=[{"name": "f", "args": {"城市": "北京"}, "id": "call_1"}])
    assert to_yangtuo_messages([call, ToolMessage("x", tool_call_id="call_1")]) == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"城市": "北京"}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "x"},
    ]


def test_needs_a_model():
    with pytest.raises(ValueError, match="model"):
        ChatYangtuo()


def test_with_structured_output_returns_parsed_objects(llm):
    """A pydantic model and a JSON Schema dict: the random model's answer comes back parsed
    and valid only because decoding was constrained."""
    from typing import Literal

    from pydantic import BaseModel, Field

    class Trip(BaseModel):
        city: Literal["北京", "上海", "Lima"]
        days: int = Field(ge=1, le=9)

    chat = ChatYangtuo(llm=llm, max_tokens=200, temperature=1.0, seed=3)
    trip = chat.with_structured_output(Trip).invoke("规划一次旅行")
    assert isinstance(trip, Trip) and 1 <= trip.days <= 9
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    out = chat.with_structured_output(schema, include_raw=True).invoke([HumanMessage("ok?")])
    assert out["parsing_error"] is None and isinstance(out["parsed"]["ok"], bool), out
    assert isinstance(out["raw"], AIMessage)
