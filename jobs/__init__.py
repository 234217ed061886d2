"""Tide's job side: specs, rows, readers, planning, shards, storage, job state, leases, reports, evals and webhooks.

Nothing here imports torch. From the engine it takes only the request and output vocabulary (sampling parameters,
guided-decoding parameters, request outputs); the engine itself is reached through the `EngineClient` seam
(`jobs/engine_client.py`), which `tide.workers.engine_service.EngineService` implements.
"""
