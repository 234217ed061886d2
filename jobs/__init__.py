"""Tide's job side: specs, readers, sharding, Parquet writers, storage, job state, webhooks and the CLI.

Nothing here imports torch: the engine is reached only through `tide.workers.engine_service`.
"""
