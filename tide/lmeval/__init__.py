"""lm-evaluation-harness drives Tide: importing this package registers the `tide` model in lm-eval's registry, so
`lm_eval.simple_evaluate(model="tide", ...)` and `tide lm-eval --model tide ...` find it.

- `model.py` `TideLM`: lm-eval's three request types, each call one Tide job.
- `requests.py` requests as job rows and results as answers, token for token as lm-eval's HF backend.
- `transport.py` a job's rows out and results back: through an `Executor` (this process, the queue) or the API.
- `connect.py` which transport: Redis, API or this process, from model_args and the settings.
- `suite.py` lm-eval tasks as a nightly suite's items (`tide beat`, `tide eval run`).
"""
try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models first: it fills an empty registry only)
    from lm_eval.api.registry import model_registry
except ImportError as exc:  # the optional extra
    raise ImportError("lm-eval is not installed; install Tide's evals extra: pip install 'tide[evals]'") from exc

model_registry.register("tide", target="tide.lmeval.model:TideLM")
