"""`tide tune` on a tiny random model: it sweeps both knobs, prints the frontier and the SLO's highest concurrency,
and saves a choice that engines built by the entry points then take (unless given their own)."""
from __future__ import annotations

import json

from tide.cli import main
from tide.tuned_defaults import tuned_options, tuned_path


def test_tune_prints_the_frontier_and_saves_what_workers_pick_up(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TIDE_CACHE_DIR", str(tmp_path))
    model = str(tiny_model_dir("llama"))
    assert main(["tune", "--model", model, "--seqs", "1,4", "--budgets", "64,512", "--max-tokens", "4",
                 "--dtype", "float32", "--threads", "1", "--slo-tpot-ms", "100000", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "frontier" in out and "<- best" in out
    assert "highest concurrency with TPOT p90 <= 100000 ms: max_num_seqs=4" in out
    saved = json.loads(tuned_path(model).read_text())
    assert saved["engine"]["max_num_seqs"] == 4 and saved["engine"]["max_num_batched_tokens"] in (64, 512, 1024)
    assert {(p["max_num_seqs"], p["max_num_batched_tokens"]) for p in saved["points"]} == {
        (1, 1024), (4, 1024), (4, 64), (4, 512)}
    assert any(p["frontier"] for p in saved["points"])
    assert tuned_options(model, {"max_num_seqs": None}) == saved["engine"]
    budget_only = {"max_num_batched_tokens": saved["engine"]["max_num_batched_tokens"]}
    assert tuned_options(model, {"max_num_seqs": 8}) == budget_only
    assert tuned_options("another-model", {}) == {}


def test_tune_refuses_bad_lists(capsys):
    assert main(["tune", "--seqs", "0,2", "--no-save"]) == 2
    assert "--seqs" in capsys.readouterr().err
