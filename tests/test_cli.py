import subprocess
import sys

import pytest

from segviz import registry
from segviz.__main__ import main
from tests.toys import ToyNet


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "toy-net", registry.ModelSpec("toy-net", ToyNet, {"num_classes": 3}))


def test_summary_command_prints_the_table(toy_registered, capsys):
    assert main(["summary", "toy-net", "--size", "32", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "toy-net at 32x32" in out and "1x8x8x8" in out and "total" in out


def test_unknown_model_is_a_clean_error(toy_registered, capsys):
    assert main(["summary", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "segviz", "list"], capture_output=True, text=True, check=True)
    assert out.returncode == 0


def test_summary_of_a_published_variant(capsys):
    assert main(["summary", "segformer-b0", "--size", "512", "--depth", "3"]) == 0
    out = capsys.readouterr().out
    assert "encoder.stages.3          1x256x16x16" in out
    total = next(line for line in out.splitlines() if line.startswith("total")).split()
    assert round(int(total[1].replace(",", "")) / 1e6, 1) == 3.8  # published B0: 3.8 M
    assert abs(float(total[2]) - 8.4) / 8.4 < 0.03  # published B0: 8.4 GFLOPs


@pytest.mark.parametrize("flag, value", [("--size", "0"), ("--size", "-64"), ("--size", "3.5"), ("--size", "abc"),
                                         ("--depth", "0"), ("--depth", "two")])
def test_bad_size_or_depth_is_an_error_with_exit_code_2(toy_registered, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        main(["summary", "toy-net", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"error: argument {flag}: must be a positive integer, got '{value}'" in err


def test_bad_size_from_the_shell_exits_with_2():
    out = subprocess.run([sys.executable, "-m", "segviz", "summary", "segformer-nano", "--size", "0"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "error: argument --size: must be a positive integer, got '0'" in out.stderr
    assert "Traceback" not in out.stderr


def test_summary_errors_from_the_library_are_clean(toy_registered, capsys, monkeypatch):
    import segviz.__main__ as cli

    def refuse(*args, **kwargs):
        raise ValueError("input_shape must be (B, C, H, W): 4 positive integers, got (1, 3, 0, 0) (0 is below 1)")

    monkeypatch.setattr(cli, "summary", refuse)
    assert main(["summary", "toy-net", "--size", "8"]) == 2
    assert capsys.readouterr().err == (
        "error: input_shape must be (B, C, H, W): 4 positive integers, got (1, 3, 0, 0) (0 is below 1)\n")
