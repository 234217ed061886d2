"""`tide eval run|list|history` in process on the tiny model (embedded defaults: no Redis)."""
from __future__ import annotations

import json

from tide.cli import main

ITEMS = [{"id": "a", "prompt": "Hello", "expected": ".*"}, {"id": "b", "prompt": "World", "expected": ".*"},
         {"id": "c", "prompt": "Again", "expected": ".*"}]


def test_eval_run_list_and_history(tmp_path, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.delenv("TIDE_REDIS_URL", raising=False)
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    config = tmp_path / "suites.yaml"
    config.write_text(f"suites:\n  smoke:\n    model: {tiny_model_dir('llama')}\n    dataset: items.jsonl\n"
                      "    history: history\n    scorer: regex\n    schedule: '0 2 * * *'\n"
                      "    sampling: {temperature: 0, max_tokens: 4}\n    min_score: 0.9\n")
    assert main(["eval", "run", "smoke", "--config", str(config), "--json", "--dtype", "float32"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["n"], first["passed"], first["status"]) == (3, 3, "passed")
    assert first["chat_template_hash"].startswith("sha256:") and first["engine_version"].startswith("tide")

    data.write_text("".join(json.dumps(dict(i, expected="^zzz$") if i["id"] == "b" else i) + "\n" for i in ITEMS))
    assert main(["eval", "run", "smoke", "--config", str(config), "--json", "--dtype", "float32"]) == 1
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["regressions"] == ["b"] and second["status"] == "failed_threshold"

    assert main(["eval", "list", "--config", str(config)]) == 0
    assert capsys.readouterr().out.startswith("smoke\t")
    assert main(["eval", "history", "smoke", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "-1 +0  failed_threshold" in lines[1]


def test_eval_mistakes_are_one_line_errors(tmp_path, capsys):
    config = tmp_path / "suites.yaml"
    config.write_text("suites:\n  s:\n    dataset: missing.jsonl\n    history: h\n    scorer: nope\n")
    assert main(["eval", "run", "s", "--config", str(config), "--local"]) == 2
    assert "unknown scorer 'nope'" in capsys.readouterr().err
    assert main(["eval", "run", "other", "--config", str(config), "--local"]) == 2
    assert "no suite 'other'" in capsys.readouterr().err
    assert main(["eval", "list", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "cannot read suites file" in capsys.readouterr().err
