"""The committed notebooks: each .ipynb is paired with its jupytext .py source and agrees with it,
carries the metadata JupyterLab writes, ran without errors, stays small and needs no CDN.

The notebooks themselves are run by nbval (``make nbval``); these checks only read files.
"""
import json
import pathlib
import re

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
IPYNB = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
SOURCES = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))
MAX_BYTES = 5 * 1024 * 1024
# what JupyterLab (ipykernel) writes when it saves a notebook: anything else marks it modified on open
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
CDN = re.compile(r"https?://(cdn\.|[\w.-]*(jsdelivr|unpkg|cdnjs|plot\.ly|cloudflare)[\w.-]*/)", re.I)


def _cells(nb):
    return [(cell.cell_type, cell.source) for cell in nb.cells]


def _id(path):
    return path.name


def test_there_are_notebooks():
    assert IPYNB, f"no notebooks under {NOTEBOOKS}"
    assert not (NOTEBOOKS / "_build").exists(), "notebooks/_build is gone: the .py files are the sources"


def test_every_notebook_has_its_paired_source_and_back():
    assert [p.stem for p in IPYNB] == [p.stem for p in SOURCES]


@pytest.mark.parametrize("path", IPYNB, ids=_id)
def test_pair_agrees(path):
    notebook = nbformat.read(path, as_version=4)
    text = path.with_suffix(".py")
    source = jupytext.read(text)
    assert notebook.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent", \
        f"{path.name} is not paired: jupytext --set-formats ipynb,py:percent {path.name}"
    assert source.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    mine, theirs = _cells(notebook), _cells(source)
    for i, (a, b) in enumerate(zip(mine, theirs)):
        assert a == b, (f"{path.name} cell {i} differs from {text.name}: run "
                        f"`jupytext --sync notebooks/{text.name}` (or `make notebooks`)\n"
                        f"ipynb: {a!r}\npy:    {b!r}")
    assert len(mine) == len(theirs), f"{path.name} has {len(mine)} cells, {text.name} {len(theirs)}"


@pytest.mark.parametrize("path", IPYNB, ids=_id)
def test_metadata_is_what_jupyterlab_writes(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata.get("kernelspec") == KERNELSPEC
    assert notebook.metadata.get("language_info", {}).get("name") == "python"
    assert jupytext.read(path.with_suffix(".py")).metadata.get("kernelspec") == KERNELSPEC
    nbformat.validate(notebook)


@pytest.mark.parametrize("path", IPYNB, ids=_id)
def test_executed_without_errors(path):
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), f"{path.name} has cells that never ran: make notebooks"
    for i, cell in enumerate(code):
        for output in cell.get("outputs", []):
            assert output.output_type != "error", f"{path.name} code cell {i}: {output.get('ename')}: {output.get('evalue')}"
            if output.output_type == "stream":
                assert output.name != "stderr" or "Traceback" not in output.text, f"{path.name} code cell {i}"


@pytest.mark.parametrize("path", IPYNB, ids=_id)
def test_small_and_no_cdn(path):
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size / 2**20:.1f} MB (limit 5 MB)"
    text = path.read_text(encoding="utf-8")
    found = CDN.search(text)
    assert found is None, f"{path.name} refers to a CDN: {found.group(0)}"
    json.loads(text)  # one JSON document


@pytest.mark.parametrize("path", IPYNB, ids=_id)
def test_widget_cells_show_a_static_image(path):
    """A reader without a kernel (a repository browser) sees a picture in every widget output."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                assert "image/png" in data, f"{path.name}: a widget output without a static image:\n{cell.source}"
