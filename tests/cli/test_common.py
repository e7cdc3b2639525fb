"""What the command groups share (:mod:`medvtab.cli.common`): ``KEY=VALUE`` options and the one-line error
handler, in this process."""
import sys

import pytest
import typer

from medvtab.cli.common import parse_key_values, run_with_one_line_errors
from medvtab.errors import MedvtabError


def test_values_parse_as_json_or_stay_strings():
    assert parse_key_values(["a=3", "b=0.5", "c=true", "d=adapter", "e=", "f=x=y"]) == {
        "a": 3, "b": 0.5, "c": True, "d": "adapter", "e": "", "f": "x=y"}


@pytest.mark.parametrize("pair", ["keep_ratio", "=0.5"])
def test_a_pair_without_key_or_sign_is_a_user_error(pair):
    with pytest.raises(MedvtabError, match=f"^option '--set': expected KEY=VALUE, got '{pair}'$"):
        parse_key_values([pair])


def test_a_user_error_is_one_unwrapped_line_with_status_2(monkeypatch, capsys):
    message = " ".join(["a long message"] * 20)  # wider than any terminal: must not wrap
    app = typer.Typer()

    @app.command()
    def fail():
        raise MedvtabError(message)

    monkeypatch.setattr(sys, "argv", ["medvtab"])
    with pytest.raises(SystemExit) as exit_:
        run_with_one_line_errors(app)
    assert exit_.value.code == 2
    assert capsys.readouterr() == ("", f"error: {message}\n")
