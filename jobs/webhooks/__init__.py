"""Standard Webhooks, delivered durably: thin events, signed with the `standardwebhooks` package, kept in an outbox
(Redis for queued jobs, memory for `tide run`) and retried on the Standard Webhooks schedule by a long-lived courier.

- `events.py` the event payloads (`batch.*`, `eval.*`) and one delivery's record.
- `signing.py` secrets (`whsec_...` or plain, space-separated for rotation) -> `webhook-*` headers.
- `delivery.py` one HTTP attempt (15 s timeout, no redirects, Retry-After) and the SSRF guard.
- `outbox.py` where deliveries wait and their logs live: `MemoryOutbox`, `RedisOutbox`.
- `courier.py` `WebhookConfig` and `Courier`: claims due deliveries, attempts them, schedules the retries.
"""
