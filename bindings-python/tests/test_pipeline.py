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
