"""The exception family and the CLI's one error path (exit status 2, one line, --debug)."""

import pytest

from invsolve import errors
from invsolve.cli import main

FAMILY = [(errors.ConfigError, ValueError), (errors.UnknownNameError, KeyError), (errors.UnknownNameError, ValueError),
          (errors.UnknownOptionError, TypeError), (errors.UnknownOptionError, ValueError),
          (errors.DataError, ValueError), (errors.CheckpointError, ValueError), (errors.PhysicsError, TypeError)]


@pytest.mark.parametrize("cls, builtin", FAMILY)
def test_family_is_invsolve_and_builtin(cls, builtin):
    err = cls("a message")
    assert isinstance(err, errors.InvsolveError) and isinstance(err, builtin)
    with pytest.raises(builtin, match="a message"):
        raise err


def test_family_public_home_and_unquoted_key_error():
    import invsolve
    import operators.errors

    assert invsolve.errors.ConfigError is operators.errors.ConfigError
    assert str(errors.UnknownNameError("unknown thing 'x'")) == "unknown thing 'x'"  # no KeyError quotes
    from invsolve.priors.checkpoints.io import CorruptCheckpointError, UnsafeCheckpointError

    assert issubclass(CorruptCheckpointError, errors.CheckpointError)
    assert issubclass(UnsafeCheckpointError, errors.CheckpointError)


def test_library_raises_family():
    import operators

    with pytest.raises(errors.UnknownNameError, match="unknown operator"):
        operators.make("no-such-operator")
    with pytest.raises(errors.UnknownOptionError, match="fixes"):
        operators.make("ct-sparse8", views=4)


def run(capsys, *argv):
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err


def check_one_line(status, err, *needles):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("invsolve: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("argv, needles", [
    (["list", "nonsense"], ["invalid choice", "nonsense"]),
    (["nonsense"], ["invalid choice"]),
    (["train", "--steps", "-1"], ["--steps", ">= 1"]),
    (["train", "--checkpoint-every", "0"], ["--checkpoint-every"]),
    (["train", "--lr", "nan"], ["--lr", "finite"]),
    (["train", "--batch", "two"], ["--batch", "integer"]),
    (["demo", "--views", "0"], ["--views"]),
    (["evaluate", "ct-phantom64", "--sigma", "0"], ["--sigma", "> 0"]),
    (["bench", "fastmri", "--samples", "0"], ["--samples"]),
    (["bench", "fastmri", "--set", "dps.zeta"], ["--set", "METHOD.KEY=VALUE"]),
    (["fastmri", "synth", "out", "--coils", "0"], ["--coils"]),
])
def test_cli_usage_errors_are_one_line(capsys, argv, needles):
    check_one_line(*run(capsys, *argv), *needles)


def test_cli_input_errors_are_one_line(capsys, tmp_path):
    check_one_line(*run(capsys, "info", str(tmp_path / "missing.pt")), "missing.pt")
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"x")
    check_one_line(*run(capsys, "info", str(garbage)), "g.safetensors", "truncated or corrupted")
    check_one_line(*run(capsys, "info"), "give a prior name")
    check_one_line(*run(capsys, "evaluate", "no-such-prior"), "no prior named")


@pytest.mark.parametrize("options, needles", [
    (["--set", "dps.bogus=1"], ["unknown hyperparameters", "bogus"]),
    (["--set", "dps.preset=nope"], ["no preset 'nope'"]),  # a KeyError, printed without its quotes
    (["--set", "nosuchmethod.x=1"], ["nosuchmethod", "not among the methods"]),
    (["--methods", "tv", "--set", "dps.zeta=1"], ["dps", "not among the methods (tv)"]),
    (["--set", "tv.bogus=3"], ["unknown options ['bogus'] for tv"]),
    (["--methods", "nope"], ["unknown methods ['nope']"]),
])
def test_cli_bench_options_checked_before_work(capsys, tmp_path, options, needles):
    status, err = run(capsys, "bench", "fastmri", "--data", str(tmp_path / "none"), "--db", str(tmp_path / "r.sqlite"),
                      *options)
    check_one_line(status, err, *needles)
    assert not err.startswith("invsolve: error: \"")
    assert not (tmp_path / "r.sqlite").exists()


def test_cli_debug_reraises(capsys, tmp_path):
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="no prior named"):
        main(["--debug", "info", missing])
    with pytest.raises(FileNotFoundError):
        main(["info", missing, "--debug"])  # after the subcommand too
    with pytest.raises(KeyError, match="no preset"):
        main(["bench", "fastmri", "--data", str(tmp_path), "--set", "dps.preset=nope", "--debug"])


def test_cli_keyboard_interrupt(capsys, monkeypatch):
    import invsolve.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_list", interrupted)
    status, err = run(capsys, "list", "samplers")
    assert status == 130 and err.strip() == "invsolve: interrupted"
    with pytest.raises(KeyboardInterrupt):
        main(["list", "samplers", "--debug"])
