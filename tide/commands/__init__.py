"""One module per `tide` command, each with `add_parser(sub, settings)`; the CLI lists them in help order."""
from tide.commands import (
    api,
    beat,
    bench,
    evals,
    jobs,
    lm_eval,
    report,
    run,
    stack,
    tune,
    webhooks,
    worker,
)

COMMANDS = (run, jobs, worker, api, stack, evals, beat, lm_eval, webhooks, report, tune, bench)
