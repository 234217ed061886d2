"""Shard leases: a claimed shard is held under a lease its worker renews; a reaper re-enqueues lapsed ones, expires
jobs past their deadline, and the lease token fences late commits (see docs/RELIABILITY.md)."""
