"""Expected failures print one clear line and exit 2, without a traceback."""
import sys
import types

import pytest

from tests.helpers.rows import write_jsonl
from tide.cli import main

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unreachable_redis_names_the_url_and_the_fix(capsys, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    for argv in (["status", "job_x"], ["submit", str(path), "--output", str(tmp_path)], ["cancel", "job_x"]):
        code, _, err = run(capsys, *argv, "--redis-url", DEAD_REDIS)
        assert code == 2
        assert err.startswith("tide: error: cannot reach Redis at redis://127.0.0.1:1/0") and "Traceback" not in err


def test_bad_job_options_name_the_field(capsys, tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "hi"}])
    code, _, err = run(capsys, "submit", str(path), "--output", str(tmp_path), "--temperature", "-1",
                       "--redis-url", DEAD_REDIS)
    assert code == 2 and "sampling" in err and "temperature" in err
    code, _, err = run(capsys, "submit", str(path), "--output", str(tmp_path), "--metadata", "novalue",
                       "--redis-url", DEAD_REDIS)
    assert code == 2 and "KEY=VALUE" in err


def test_run_with_a_missing_file_says_so(capsys, tmp_path):
    code, _, err = run(capsys, "run", str(tmp_path / "nope.jsonl"))
    assert code == 2 and "nope.jsonl" in err and "does not exist" in err


def test_bad_arguments_exit_through_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["submit", "in.jsonl"])
    assert exit_info.value.code == 2 and "--output" in capsys.readouterr().err


def test_bench_hands_its_arguments_to_the_engine_benchmark(monkeypatch):
    seen = []
    fake = types.ModuleType("tide.benchmarks.engine")
    fake.main = lambda argv=None: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "tide.benchmarks.engine", fake)
    assert main(["bench", "--workload", "chat", "--num-prompts", "8"]) == 0
    assert seen == [["--workload", "chat", "--num-prompts", "8"]]
