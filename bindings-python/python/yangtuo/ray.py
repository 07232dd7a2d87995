"""yangtuo on Ray Serve: replicas of one model across a Ray cluster, with Ray's load-aware
routing, autoscaling on queue length, restarts of failed replicas and multi-node placement.

Each replica holds one ``yangtuo.Llama`` and answers OpenAI's ``/v1/chat/completions`` and
``/v1/completions`` (streamed or not) through the binding's ``create_chat_completion`` /
``create_completion``: the request and answer types, and the error bodies, are core's, as in
``yangtuo serve``. Concurrent requests on a replica batch together (``parallel`` sequences);
Ray sends a replica at most that many at a time and queues the rest.

    python -m yangtuo.ray --model M --replicas 2            # a local Ray cluster, or $RAY_ADDRESS
    python -m yangtuo.ray --model M --min-replicas 1 --max-replicas 4 --num-gpus 1

or from Python: ``serve.run(yangtuo.ray.app("M", num_replicas=2), route_prefix="/")``.
Needs ``pip install 'yangtuo[ray]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
from typing import Any, AsyncIterator, Optional

try:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("yangtuo.ray needs Ray Serve: pip install 'yangtuo[ray]'") from e

REPLICA_HEADER = "x-yangtuo-replica"


def _replica_id() -> str:
    ctx = serve.get_replica_context()
    rid = getattr(ctx, "replica_id", None)
    return getattr(rid, "unique_id", None) or getattr(ctx, "replica_tag", None) or str(os.getpid())


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}}, status_code=status)


@serve.deployment(name="yangtuo")
class YangtuoReplica:
    """One model per replica; `llama_options` are ``yangtuo.Llama``'s keywords."""

    def __init__(self, model: str, llama_options: dict) -> None:
        import yangtuo

        self._yangtuo = yangtuo
        self.llm = yangtuo.Llama(model, **llama_options)
        self.model = model
        self.replica = _replica_id()

    async def __call__(self, request: Request) -> Response:
        headers = {REPLICA_HEADER: self.replica}
        path = request.url.path.rstrip("/")
        if request.method == "GET" and path in ("/health", ""):
            return JSONResponse({"status": "ok", "replica": self.replica, "pid": os.getpid()}, headers=headers)
        if request.method == "GET" and path == "/v1/models":
            return JSONResponse({"object": "list", "data": [{"id": os.path.basename(self.model.rstrip("/")), "object": "model"}]})
        call = {"/v1/chat/completions": self.llm.create_chat_completion, "/v1/completions": self.llm.create_completion}.get(path)
        if call is None or request.method != "POST":
            return _error(404, f"no route {request.method} {request.url.path}")
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return _error(400, f"the body is not JSON: {e}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        first = "messages" if path.endswith("chat/completions") else "prompt"
        if first not in body:
            return _error(400, f"missing field `{first}`")
        try:
            answer = await asyncio.to_thread(call, body.pop(first), **body)
            if not body.get("stream"):
                return JSONResponse(answer, headers=headers)
            # the first chunk comes before the response starts, so a bad request is a 400
            head = await asyncio.to_thread(next, answer, None)
        except self._yangtuo.YangtuoError as e:
            return JSONResponse(e.openai_error or {"error": {"message": str(e)}}, status_code=e.http_status, headers=headers)
        return StreamingResponse(_sse(answer, head), media_type="text/event-stream", headers=headers)


async def _sse(chunks: Any, head: Optional[dict]) -> AsyncIterator[str]:
    """Server-sent events of `chunks` (the binding's iterator), `head` first; a client that
    goes away stops the generation."""
    try:
        chunk = head
        while chunk is not None:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            chunk = await asyncio.to_thread(next, chunks, None)
        yield "data: [DONE]\n\n"
    finally:
        chunks.close()


def app(
    model: str,
    *,
    num_replicas: Optional[int] = 1,
    min_replicas: Optional[int] = None,
    max_replicas: Optional[int] = None,
    target_ongoing_requests: Optional[float] = None,
    autoscaling: Optional[dict] = None,
    num_cpus: Optional[float] = None,
    num_gpus: Optional[float] = None,
    parallel: int = 4,
    backend: str = "auto",
    n_ctx: Optional[int] = None,
    **llama_options: Any,
):
    """The Ray Serve application: ``num_replicas`` replicas, or with ``min_replicas`` /
    ``max_replicas`` (or a whole ``autoscaling`` config) as many as the queue needs, each
    with ``num_cpus`` / ``num_gpus`` and a model batching ``parallel`` sequences."""
    scaling = dict(autoscaling or {})
    if min_replicas is not None or max_replicas is not None:
        scaling.setdefault("min_replicas", min_replicas if min_replicas is not None else 1)
        scaling.setdefault("max_replicas", max_replicas if max_replicas is not None else scaling["min_replicas"])
    if target_ongoing_requests is not None:
        scaling["target_ongoing_requests"] = target_ongoing_requests
    actor: dict = {}
    if num_cpus is not None:
        actor["num_cpus"] = num_cpus
    if num_gpus is not None:
        actor["num_gpus"] = num_gpus
    options: dict = {"ray_actor_options": actor, "max_ongoing_requests": parallel}
    if scaling:
        scaling.setdefault("target_ongoing_requests", parallel)
        options["autoscaling_config"] = scaling
    else:
        options["num_replicas"] = num_replicas
    llama = {"backend": backend, "parallel": parallel, "n_ctx": n_ctx, **llama_options}
    return YangtuoReplica.options(**options).bind(model, llama)


def main(argv: Optional[list] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m yangtuo.ray", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model folder, .gguf file or Hugging Face repo id (on every node)")
    p.add_argument("--replicas", type=int, default=1, help="a fixed number of replicas")
    p.add_argument("--min-replicas", type=int, help="autoscale from this many ...")
    p.add_argument("--max-replicas", type=int, help="... to this many replicas, on queue length")
    p.add_argument("--target-ongoing-requests", type=float, help="autoscaling's target per replica (default: --parallel)")
    p.add_argument("--num-cpus", type=float, help="CPUs per replica (Ray's resources)")
    p.add_argument("--num-gpus", type=float, help="GPUs per replica")
    p.add_argument("--parallel", type=int, default=4, help="sequences one replica batches (and takes at once)")
    p.add_argument("--backend", default="auto", help="auto, wgpu, cuda or cpu")
    p.add_argument("--ctx", type=int, help="context length")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="a Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    a = p.parse_args(argv)
    import ray

    ray.init(address=a.address)
    serve.start(http_options={"host": a.host, "port": a.port})
    serve.run(
        app(
            a.model,
            num_replicas=a.replicas,
            min_replicas=a.min_replicas,
            max_replicas=a.max_replicas,
            target_ongoing_requests=a.target_ongoing_requests,
            num_cpus=a.num_cpus,
            num_gpus=a.num_gpus,
            parallel=a.parallel,
            backend=a.backend,
            n_ctx=a.ctx,
        ),
        name="yangtuo",
        route_prefix="/",
    )
    print(f"yangtuo on Ray Serve: http://{a.host}:{a.port}/v1/chat/completions (Ctrl-C stops it)", flush=True)
    stop = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *_: stop.set())
    while not stop.wait(1):
        pass
    serve.delete("yangtuo")


if __name__ == "__main__":
    main()
