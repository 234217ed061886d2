"""`tide api`: serve the HTTP API with uvicorn."""
from __future__ import annotations

import argparse
import logging

from tide.options import add_redis_option
from tide.settings import Settings

logger = logging.getLogger("tide.api")


def add_parser(sub, settings: Settings) -> None:
    p = sub.add_parser("api", help="serve the OpenAI-compatible Files/Batches API and native jobs over HTTP")
    p.add_argument("--host", default=settings.api_host)
    p.add_argument("--port", type=int, default=settings.api_port)
    p.add_argument("--storage", default=settings.storage, help="local directory or s3://bucket/prefix for files")
    add_redis_option(p, settings)
    p.set_defaults(handler=lambda args: serve(args, settings))


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from tide.api.app import create_app
    from tide.api.services import Services
    from tide.logs import uvicorn_log_config

    settings = settings.model_copy(update={"redis_url": args.redis_url, "storage": args.storage})
    if not settings.api_keys:
        logger.warning("no API keys configured (TIDE_API_KEYS): every request will be refused with 401")
    app = create_app(Services.from_settings(settings))
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), access_log=False,
                log_config=uvicorn_log_config(settings.log_format))
    return 0
