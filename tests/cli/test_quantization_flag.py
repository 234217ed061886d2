"""`--quantization` on `tide worker` and `tide run`: defaults from TIDE_QUANTIZATION, only none|int8 accepted."""
import pytest
from pydantic import ValidationError

from tide.cli import build_parser
from tide.settings import Settings


@pytest.mark.parametrize("command", [["worker"], ["run", "p.jsonl"]])
def test_quantization_flag_defaults_from_the_setting_and_can_be_given(command, monkeypatch):
    monkeypatch.setenv("TIDE_QUANTIZATION", "int8")
    assert build_parser(Settings(_env_file=None)).parse_args(command).quantization == "int8"
    parser = build_parser(Settings(_env_file=None, quantization="none"))
    assert parser.parse_args(command).quantization == "none"
    assert parser.parse_args([*command, "--quantization", "int8"]).quantization == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--quantization", "int4"])


def test_quantization_setting_refuses_other_values():
    with pytest.raises(ValidationError, match="quantization"):
        Settings(_env_file=None, quantization="int4")
