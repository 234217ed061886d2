"""Eval suites: a YAML file of suites, each a dataset run as a normal job and scored, with run history.

- `suites.py` the suites file (`Suite`, `load_suites`).
- `scorers.py` built-in scorers and dotted-path custom ones.
- `dataset.py` eval items (id, prompt|messages, expected) -> the job's input, malformed items -> error rows.
- `history.py` `RunRecord` (run.json), results.parquet, the suite's index, regressions vs the previous run.
- `runner.py` one run: job, scoring, history, webhook; `Executor`s for in-process and queued jobs.
- `schedule.py` cron slots in UTC, missed slots within a grace window, the Redis lock and per-slot claim.
"""
