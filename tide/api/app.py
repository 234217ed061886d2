"""The FastAPI application: routers, OpenAI-shaped errors, request size limits."""
from __future__ import annotations

from fastapi import FastAPI

from tide.api import batches, dashboard, errors, files, jobs_routes, ops
from tide.api.limits import BodyLimit
from tide.api.services import Services
from tide.logs import LogContext


def create_app(svc: Services) -> FastAPI:
    """An app over `svc`; every route but health, readiness and metrics requires a bearer key."""
    app = FastAPI(title="Tide", version="0.1.0", description="OpenAI-compatible batch inference on your hardware.")
    app.state.services = svc
    errors.install(app)
    for module in (files, batches, jobs_routes, ops, dashboard):
        app.include_router(module.router)
    app.add_middleware(BodyLimit, request_bytes=svc.settings.max_request_bytes,
                       upload_bytes=svc.settings.max_upload_bytes)
    app.add_middleware(LogContext)  # log lines of a request on a job name that job
    return app
