"""Tide's worker side: the Celery app, dispatcher and tasks, the service that owns one engine per worker process,
worker heartbeats, the eval cron behind `tide beat`, and the local processes `tide stack` and the tests start."""
