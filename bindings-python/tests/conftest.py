"""Fixtures: a random tiny Llama written by the workspace's `make-model` with the real
Llama 2 tokenizer, loaded once per test session.

Environment: YANGTUO_MAKE_MODEL (the make-model binary; default
$CARGO_TARGET_DIR/release/make-model, CARGO_TARGET_DIR defaulting to ~/.cache/yangtuo-target)
or YANGTUO_TEST_MODEL (a model it wrote beforehand), YANGTUO_SHARED (test data; default
<repo>/tests/data), YANGTUO_CLI (the `yangtuo` binary, for the parity test), YANGTUO_TEST_BACKEND
(default cpu)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yangtuo

REPO = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or Path.home() / ".cache" / "yangtuo-target")
BACKEND = os.environ.get("YANGTUO_TEST_BACKEND", "cpu")
USER = [{"role": "user", "content": "咖啡的作用是什么?"}]
GREEDY = {"temperature": 0.0}


def _binary(env: str, name: str) -> Path:
    return Path(os.environ.get(env) or TARGET / "release" / name)


def shared_dir() -> Path:
    return Path(os.environ.get("YANGTUO_SHARED") or REPO / "tests" / "data")


def cli_binary() -> Path:
    return _binary("YANGTUO_CLI", "yangtuo")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("YANGTUO_TEST_MODEL"):  # one written beforehand with the arguments below
        return Path(os.environ["YANGTUO_TEST_MODEL"])
    make_model = _binary("YANGTUO_MAKE_MODEL", "make-model")
    tokenizer = shared_dir() / "tokenizers" / "llama2"
    if not make_model.exists():
        pytest.skip(
            f"no make-model at {make_model}: run `cargo build --release -p yangtuo-tests --bins` or set YANGTUO_MAKE_MODEL"
        )
    if not (tokenizer / "tokenizer.model").exists():
        pytest.fail(f"no Llama 2 tokenizer at {tokenizer}: tests/data is missing from the repository")
    out = tmp_path_factory.mktemp("model") / "tiny-llama"
    shape = {"hidden": 64, "intermediate": 160, "layers": 2, "heads": 4, "kv-heads": 2, "vocab": 32000, "dtype": "f16"}
    args = [a for k, v in shape.items() for a in (f"--{k}", str(v))]
    subprocess.run(
        [str(make_model), "--out", str(out), *args, "--tokenizer", str(tokenizer)], check=True, capture_output=True
    )
    return out


@pytest.fixture(scope="session")
def llm(model_dir: Path) -> yangtuo.Llama:
    return yangtuo.Llama(model_dir, backend=BACKEND, progress=False)


@pytest.fixture(scope="session")
def long_llm(model_dir: Path) -> yangtuo.Llama:
    """A longer context, for generations that must run a while (Ctrl-C tests)."""
    return yangtuo.Llama(model_dir, backend=BACKEND, n_ctx=4096, progress=False)


@pytest.fixture(scope="session")
def greedy_answer(llm: yangtuo.Llama) -> yangtuo.ChatResult:
    return llm.chat(USER, max_tokens=16, **GREEDY)
