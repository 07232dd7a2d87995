"""Tool calls through create_chat_completion and LangChain's bind_tools, on a random model
whose free output is noise: every call names an offered tool and its arguments validate
against that tool's schema under Python's ``jsonschema`` (a validator yangtuo did not write)."""

import json

import jsonschema
import pytest

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 6},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
SEARCH = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "maxLength": 10},
        "filters": {"type": "array", "items": {"enum": ["新闻", "图片"]}, "minItems": 1, "maxItems": 2},
    },
    "required": ["query", "filters"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "查询天气", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "search", "description": "搜索", "parameters": SEARCH}},
]
SCHEMAS = {"get_weather": WEATHER, "search": SEARCH}
ASK = [{"role": "user", "content": "明天北京天气怎么样？"}]


def check_call(call):
    assert call["type"] == "function" and call["id"].startswith("call_")
    name = call["function"]["name"]
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS[name])
    return name


@pytest.mark.parametrize("seed", range(8))
def test_required_calls_validate(long_llm, seed):
    r = long_llm.create_chat_completion(ASK, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed, max_tokens=300)
    choice = r["choices"][0]
    assert choice["finish_reason"] == "tool_calls", r
    assert choice["message"]["content"] is None
    check_call(choice["message"]["tool_calls"][0])


def test_named_choice_streamed_and_history(long_llm):
    named = {"type": "function", "function": {"name": "search"}}
    chunks = list(
        long_llm.create_chat_completion(ASK, tools=TOOLS, tool_choice=named, seed=2, temperature=1.0, max_tokens=300, stream=True)
    )
    calls = [t for c in chunks for t in c["choices"][0]["delta"].get("tool_calls") or []]
    assert len(calls) == 1 and check_call(calls[0]) == "search"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    # the call and its result go back into the history, and the model answers on
    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [{k: calls[0][k] for k in ("id", "type", "function")}]},
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "晴，25°C"},
    ]
    r = long_llm.create_chat_completion(history, tools=TOOLS, max_tokens=8, seed=1)
    assert r["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


def test_bad_tools_are_named(long_llm):
    from yangtuo import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="tool_choice"):
        long_llm.create_chat_completion(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(InvalidArgumentError, match="tools"):
        long_llm.create_chat_completion(ASK, tools=[{"type": "function", "function": {"name": "a b"}}])


def test_langchain_bind_tools(long_llm):
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from pydantic import BaseModel, Field
    from yangtuo.langchain import ChatYangtuo

    from typing import Literal

    @tool
    def get_weather(city: Literal["北京", "上海"], unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        """查询天气"""
        return f"{city}: 晴"

    class Search(BaseModel):
        """搜索"""

        query: str = Field(max_length=10)
        page: int = Field(ge=1, le=5)

    chat = ChatYangtuo(llm=long_llm, max_tokens=300, temperature=1.0, seed=4)
    bound = chat.bind_tools([get_weather, Search], tool_choice="any")
    msg = bound.invoke([HumanMessage("北京天气？")])
    assert isinstance(msg, AIMessage) and len(msg.tool_calls) == 1, msg
    call = msg.tool_calls[0]
    schema = Search.model_json_schema() if call["name"] == "Search" else get_weather.tool_call_schema.model_json_schema()
    jsonschema.validate(call["args"], schema)
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    # streamed, the chunks add up to the same call
    streamed = None
    for c in bound.stream([HumanMessage("北京天气？")]):
        streamed = c if streamed is None else streamed + c
    strip = lambda calls: [{k: v for k, v in c.items() if k != "id"} for c in calls]  # noqa: E731 - ids are fresh
    assert strip(streamed.tool_calls) == strip(msg.tool_calls)
    # a named tool, and the ToolMessage round trip
    named = chat.bind_tools([get_weather, Search], tool_choice="Search").invoke("找新闻")
    assert named.tool_calls[0]["name"] == "Search"
    jsonschema.validate(named.tool_calls[0]["args"], Search.model_json_schema())
    history = [HumanMessage("找新闻"), named, ToolMessage("没有结果", tool_call_id=named.tool_calls[0]["id"])]
    after = chat.bind_tools([get_weather, Search]).invoke(history, max_tokens=8)
    assert isinstance(after, AIMessage)
