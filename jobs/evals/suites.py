"""The suites file:

    suites:
      smoke:
        model: smollm2-135m
        schedule: "0 2 * * *"
        timezone: UTC
        dataset: s3://evals/smoke.jsonl
        scorer: contains
        sampling: {temperature: 0, max_tokens: 32}
        history: s3://evals/history
        min_score: 0.8
        max_regressions: 0
        webhook: https://example.org/hooks/evals
      harness:
        model: smollm2-135m
        schedule: "0 3 * * *"
        lm_eval:                      # lm-evaluation-harness tasks instead of a dataset and scorer
          tasks: [local_mc, local_gen]
          include_path: tasks/        # task YAML files of your own (datasets from local JSONL files)
        history: s3://evals/history
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tide.engine.sampling_params import SamplingParams
from tide.jobs.webhooks.delivery import http_url

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SuiteError(ValueError):
    """A suites file or suite that cannot be used; the message says what to fix."""


class LmEvalTasks(BaseModel):
    """A suite made of lm-evaluation-harness tasks (run by tide/lmeval/suite.py): each task's documents are the
    suite's items, scored by lm-eval's own per-document metric."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[str] = Field(min_length=1, description="lm-eval task (or group) names")
    include_path: str | None = Field(None, description="a directory of task YAML files of your own")
    num_fewshot: int | None = Field(None, ge=0)
    limit: int | None = Field(None, ge=1, description="at most this many documents per task")
    metric: str | None = Field(None, description="the per-document metric items are scored by (default: each "
                               "task's first, e.g. acc or exact_match); an item passes when it scores 1")
    tokenizer: str | None = Field(None, description="where the model's tokenizer is, when only the workers know "
                                  "the model's name")
    max_length: int | None = Field(None, ge=2, description="longest context in tokens (default: the model's)")


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "smollm2-135m"
    dataset: str | None = Field(None, min_length=1, description="JSONL or Parquet rows: id, prompt|messages, "
                                "expected")
    lm_eval: LmEvalTasks | None = Field(None, description="lm-eval tasks, in place of dataset and scorer")
    scorer: str = "exact"
    sampling: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0, "max_tokens": 64})
    history: str = Field(min_length=1, description="local directory or s3:// prefix of the run history")
    schedule: str | None = Field(None, description="cron, five fields, in `timezone`")
    timezone: str = "UTC"
    min_score: float | None = Field(None, ge=0, le=1)
    max_regressions: int | None = Field(None, ge=0)
    webhook: str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _items_from_one_place(self) -> "Suite":
        if (self.dataset is None) == (self.lm_eval is None):
            raise ValueError("give a dataset (with a scorer) or lm_eval tasks, one of the two")
        if self.lm_eval is not None and {"scorer", "sampling"} & self.model_fields_set:
            raise ValueError("lm_eval tasks bring their own scoring and generation settings: drop scorer and sampling")
        return self

    @field_validator("sampling")
    @classmethod
    def _sampling(cls, value: dict[str, Any]) -> dict[str, Any]:
        SamplingParams(**value)
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a cron expression like '0 2 * * *'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (an IANA name such as UTC or Europe/Paris)") from None
        return value

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return http_url("webhook", value)


def parse_suites(text: str, source: str = "suites file") -> dict[str, Suite]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("suites"), dict) or not data["suites"]:
        raise SuiteError(f"{source} needs a top-level `suites:` mapping of suite names to suites")
    suites = {}
    for name, body in data["suites"].items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise SuiteError(f"{source}: suite name {name!r} must be letters, digits, '.', '_' or '-'")
        try:
            suites[name] = Suite.model_validate(body or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or name}: {e['msg']}" for e in exc.errors())
            raise SuiteError(f"{source}: suite {name!r}: {problems}") from None
    return suites


def load_suites(path: str | Path) -> dict[str, Suite]:
    """Every suite of a suites file; a relative local dataset or history is taken relative to the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SuiteError(f"cannot read suites file {str(path)!r}: {exc.strerror or exc}") from None
    suites = parse_suites(text, str(path))
    return {name: _anchored(suite, path.parent) for name, suite in suites.items()}


def get_suite(suites: dict[str, Suite], name: str) -> Suite:
    if name not in suites:
        known = ", ".join(sorted(suites)) or "none"
        raise SuiteError(f"no suite {name!r} in the suites file (suites: {known})")
    return suites[name]


def _anchored(suite: Suite, base: Path) -> Suite:
    """The suite with its relative local paths (dataset, history, lm-eval include_path) taken from `base`."""
    update: dict[str, Any] = {"history": _anchor(suite.history, base)}
    if suite.dataset is not None:
        update["dataset"] = _anchor(suite.dataset, base)
    if suite.lm_eval is not None and suite.lm_eval.include_path is not None:
        update["lm_eval"] = suite.lm_eval.model_copy(update={"include_path": _anchor(suite.lm_eval.include_path,
                                                                                       base)})
    return suite.model_copy(update=update)


def _anchor(uri: str, base: Path) -> str:
    if "://" in uri or Path(uri).is_absolute():
        return uri
    return str((base / uri).resolve())
