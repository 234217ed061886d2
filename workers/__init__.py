"""Tide's worker side: the Celery app and tasks, and the service that owns one engine per worker process."""
