"""The two install routes agree, and the README's commands are what CI runs."""
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_side = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["notebook"]}
    conda_side = set()
    text = (ROOT / "environment.yml").read_text()
    for line in text[text.index("dependencies:") :].splitlines():
        m = re.match(r"\s+-\s+([A-Za-z0-9_.-]+)", line)
        if m:
            conda_side.add(m.group(1).lower())
    conda_side -= {"python", "pip"}
    conda_side = {"torch" if n == "pytorch" else n for n in conda_side}
    assert conda_side == pip_side
    required = {"torch", "numpy", "matplotlib", "plotly", "ipywidgets", "jupyterlab", "nbval", "scikit-image", "scipy", "tqdm"}
    assert required <= pip_side
    assert "conda-forge" in (ROOT / "environment.yml").read_text()


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    assert "make lab" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert "torch==2.13.0" in makefile
    assert "--nbval-lax --nbval-current-env" in makefile


def test_make_lab_serves_the_notebooks_folder():
    import os
    import subprocess

    dry = subprocess.run(["make", "-n", "-W", ".venv/.notebook-installed", "lab"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    line = next(l for l in dry.splitlines() if "jupyter lab" in l)
    assert "--ServerApp.root_dir=notebooks" in line
    assert ("--allow-root" in line) == (os.geteuid() == 0)  # jupyter refuses root without it


def test_make_notebooks_reexecutes_from_the_paired_sources_and_make_test_runs_nbval():
    import subprocess

    def dry(target):
        return subprocess.run(["make", "-n", "-W", ".venv/.notebook-installed", "-W", ".venv/.test-installed", target],
                              cwd=ROOT, capture_output=True, text=True, check=True).stdout

    notebooks = dry("notebooks")
    assert "jupytext --sync" in notebooks and "nbconvert --to notebook --execute --inplace" in notebooks
    for source in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert f"notebooks/{source.name}" in notebooks and f"notebooks/{source.stem}.ipynb" in notebooks
    test = dry("test")
    assert "pytest tests" in test and "--nbval-lax --nbval-current-env" in test and "nbconvert" not in test
    assert "export MPLBACKEND := Agg" in (ROOT / "Makefile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "jupytext" in {_name(r) for r in project["optional-dependencies"]["notebook"]}
