"""A FastAPI model server in the shape the Kubernetes guides recommend (the lifespan loads
the model, a background inference thread takes work from a queue), rewritten so that its
readiness and liveness come from Vitals instead of `/ready` and `/health/live` endpoints
answered by the HTTP thread, which stay green while the inference thread is deadlocked.

    pip install fastapi uvicorn ./shared/python
    VITALS_NAME=model VITALS_AGENT_SOCKET=/run/vitals/agent.sock \\
        uvicorn fastapi_app:app --app-dir shared/python/examples --port 8080

The container's probes point at the agent, not at this app:

    startupProbe:   {httpGet: {path: /startupz/model, port: 9180}, periodSeconds: 2}
    livenessProbe:  {httpGet: {path: /livez/model, port: 9180}}
    readinessProbe: {httpGet: {path: /readyz/model, port: 9180}, periodSeconds: 1}

Needs fastapi (and pydantic, which it brings) and an ASGI server such as uvicorn.
"""

import asyncio
import queue
import threading
from concurrent.futures import Future
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import fake_model
from inference import inference_loop
from vitals_reporter import Reporter


reporter = Reporter(version="fastapi-example")
jobs = queue.Queue(maxsize=1024)


@asynccontextmanager
async def lifespan(app):
    # The load runs in a thread so the event loop stays free; the agent sees its progress
    # (bytes, then layers), so a slow load that moves is never killed, a stuck one is.
    model = await asyncio.to_thread(fake_model.load, reporter)
    reporter.phase("warming", "warm-up batch")
    await asyncio.to_thread(model.embed, ["warm-up"] * 8)
    # With torch: reporter.check("device", torch.cuda.is_available(), torch.cuda.get_device_name())
    reporter.check("device", True, "cpu")
    loop = threading.Thread(
        target=inference_loop, args=(reporter, model, jobs), name="inference", daemon=True
    )
    loop.start()
    reporter.phase("ready", "serving")
    yield
    reporter.phase("draining", f"shutting down: finishing {jobs.qsize()} queued")
    jobs.put(None)
    await asyncio.to_thread(loop.join)
    reporter.close()


app = FastAPI(lifespan=lifespan)


class EmbedRequest(BaseModel):
    input: list[str]


@app.post("/embed")
async def embed(request: EmbedRequest):
    future = Future()
    try:
        jobs.put_nowait((request.input, future))
    except queue.Full:
        raise HTTPException(status_code=503, detail="queue full") from None
    reporter.pending = jobs.qsize()
    return {"embeddings": await asyncio.wrap_future(future)}
