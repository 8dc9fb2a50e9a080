"""Arrows point one way: nn -> models -> inspect -> training -> viz -> the package's public face.

A module may import from its own layer and the layers below it, never from a layer above, not
even inside a function (a lazy import is still an arrow). And every ``segviz.nn`` module
imports on its own, in a fresh interpreter: no import cycle is hidden by an import order.
"""
import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segviz"

# layer of each top-level part of the package; lower numbers sit lower
LAYERS = {
    "segviz.nn": 0, "segviz.weights": 0, "segviz.data": 0, "segviz.zoo": 0,
    "segviz.models": 1, "segviz.registry": 1,
    "segviz.inspect": 2,
    "segviz.training": 3,
    "segviz.viz": 4,
    "segviz": 5,  # the public face (__init__, __main__)
}


def _layer(module: str) -> tuple[str, int]:
    parts = module.split(".")
    for n in (2, 1):
        name = ".".join(parts[:n])
        if name in LAYERS and (n == 1 or len(parts) >= 2):
            if n == 2 or module == "segviz" or parts[1] in ("__init__", "__main__"):
                return name, LAYERS[name]
    raise AssertionError(f"{module} belongs to no layer; add it to LAYERS in {__file__}")


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, module: str):
    """(line, imported module) for every segviz import anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "segviz":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "segviz":
                continue
            for alias in node.names:  # `from segviz import training` imports segviz.training
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if _is_module(sub) else base


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_the_layer_table_covers_every_module():
    for path in SOURCES:
        _layer(_module_name(path))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_import(path):
    module = _module_name(path)
    own_name, own = _layer(module)
    upward = []
    for line, imported in _imports(path, module):
        name, layer = _layer(imported)
        if layer > own:
            upward.append(f"line {line}: {imported} ({name}, layer {layer})")
    assert not upward, f"{module} (layer {own}, {own_name}) imports from above:\n" + "\n".join(upward)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\ndef f():\n    from segviz.inspect import capture, flops\n    from ..viz import arrays\n")
    found = [imp for _, imp in _imports(probe, "segviz.nn.probe")]
    assert found == ["segviz.inspect.capture", "segviz.inspect", "segviz.viz.arrays"]


NN_MODULES = sorted(_module_name(p) for p in (PACKAGE / "nn").glob("*.py"))


@pytest.mark.parametrize("module", NN_MODULES)
def test_every_nn_module_imports_alone_in_a_fresh_interpreter(module):
    code = (f"import sys, {module}\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('segviz.inspect', 'segviz.viz', 'segviz.training')))\n"
            "assert not bad, bad\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
