"""Python and the CLI run the same engine: greedy ids are identical."""

import json
import subprocess

import pytest
from conftest import BACKEND, GREEDY, USER, cli_binary


def cli_generate(model_dir, ids, max_tokens):
    cli = cli_binary()
    if not cli.exists():
        pytest.skip(f"no yangtuo CLI at {cli}: run `cargo build --release -p yangtuo-cli` or set YANGTUO_CLI")
    out = subprocess.run(
        [
            str(cli),
            "generate",
            "--model",
            str(model_dir),
            "--backend",
            BACKEND,
            "--ids",
            ",".join(map(str, ids)),
            "--max-tokens",
            str(max_tokens),
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_chat_ids_match_the_cli(llm, model_dir):
    prompt = llm.apply_chat_template(USER)
    cli = cli_generate(model_dir, prompt, 24)
    py = llm.chat(USER, max_tokens=24, **GREEDY)
    assert py.ids == cli["ids"]
    assert py.content == cli["text"]
    assert py.usage.total_tokens == cli["usage"]["total_tokens"]


def test_generate_ids_match_the_cli(llm, model_dir):
    prompt = [1, *llm.tokenize("Once upon a time")]
    cli = cli_generate(model_dir, prompt, 24)
    assert llm.generate(prompt, max_tokens=24, **GREEDY).ids == cli["ids"]
    assert llm.generate("Once upon a time", max_tokens=24, **GREEDY).ids == cli["ids"]
