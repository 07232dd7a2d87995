"""yangtuo.pipeline: the transformers-style entry point."""

import pytest
import yangtuo
from conftest import BACKEND, GREEDY, USER


@pytest.fixture(scope="module")
def pipe(model_dir):
    return yangtuo.pipeline(
        "text-generation", model=model_dir, backend=BACKEND, progress=False, max_tokens=16, **GREEDY
    )


def test_text_and_messages(pipe, greedy_answer):
    assert pipe("咖啡的作用是什么?") == {"text": greedy_answer.content}
    assert pipe(USER) == {"text": greedy_answer.content}


def test_kwargs_pass_through_to_chat(pipe, greedy_answer):
    short = pipe("咖啡的作用是什么?", max_tokens=4)["text"]
    assert greedy_answer.content.startswith(short) and short != greedy_answer.content
    # transformers' names
    assert pipe("咖啡的作用是什么?", max_new_tokens=4)["text"] == short
    assert pipe("咖啡的作用是什么?", do_sample=False, temperature=0.9)["text"] == greedy_answer.content


def test_batches(pipe, greedy_answer):
    assert pipe(["咖啡的作用是什么?", "咖啡的作用是什么?"]) == [{"text": greedy_answer.content}] * 2
    assert pipe([USER, USER]) == [{"text": greedy_answer.content}] * 2


def test_takes_a_loaded_llama(llm, greedy_answer):
    p = yangtuo.pipeline("text-generation", model=llm)
    assert p("咖啡的作用是什么?", max_tokens=16, **GREEDY) == {"text": greedy_answer.content}


def test_bad_pipelines(llm):
    with pytest.raises(ValueError, match="task"):
        yangtuo.pipeline("summarization", model=llm)
    with pytest.raises(ValueError, match="model"):
        yangtuo.pipeline("text-generation")


def test_modelscope_task_names(llm, greedy_answer):
    p = yangtuo.pipeline(yangtuo.Tasks.text_generation, model=llm, max_tokens=16, **GREEDY)
    assert p("咖啡的作用是什么?")["text"] == greedy_answer.content
    assert yangtuo.pipeline(yangtuo.Tasks.chat, model=llm).task == "text-generation"


def test_transformers_output_format(llm, greedy_answer):
    p = yangtuo.pipeline("text-generation", model=llm, output_format="transformers", max_tokens=16, **GREEDY)
    q = "咖啡的作用是什么?"
    assert p(q) == [{"generated_text": q + greedy_answer.content}]
    assert p(q, return_full_text=False) == [{"generated_text": greedy_answer.content}]
    assert p(USER) == [{"generated_text": [*USER, {"role": "assistant", "content": greedy_answer.content}]}]
    assert p([q, q], return_full_text=False) == [[{"generated_text": greedy_answer.content}]] * 2
    # the default stays modelscope's shape, which does not take return_full_text
    with pytest.raises(ValueError, match="return_full_text"):
        yangtuo.pipeline("text-generation", model=llm)(q, return_full_text=False)
    with pytest.raises(ValueError, match="output_format"):
        yangtuo.pipeline("text-generation", model=llm, output_format="xml")
