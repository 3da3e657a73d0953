"""The package's import layering (CONTRIBUTING.md, "Layering"): every `vlm_spatial` module imports
only modules of its own layer or below, lazy (function-level) imports included."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlm_spatial"
# module (or package) -> layer; a module takes the layer of its longest listed prefix
LAYERS = {
    "vlm_spatial.parallel": 0,
    "vlm_spatial.models": 1,
    # the inference-side checkpoint format, the generic param helpers and decoding: below training/ and api
    "vlm_spatial.checkpoint": 2,
    "vlm_spatial.convert.params": 2,
    "vlm_spatial.evaluation.generate": 2,
    "vlm_spatial.convert": 3,
    "vlm_spatial.data": 3,
    "vlm_spatial.api": 4,
    "vlm_spatial": 4,  # the package itself: `vlm_spatial.load` is the api's
    "vlm_spatial.training": 5,
    "vlm_spatial.evaluation": 5,
    "vlm_spatial.runconfig": 5,
    "vlm_spatial.main": 6,
    "vlm_spatial.evaluate": 6,
    "vlm_spatial.sweep": 6,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    if module == "vlm_spatial":
        return LAYERS["vlm_spatial"]
    prefixes = [m for m in LAYERS if m != "vlm_spatial" and (module == m or module.startswith(m + "."))]
    assert prefixes, f"{module} has no layer: add it (or its package) to LAYERS in tests/test_layering.py"
    return LAYERS[max(prefixes, key=len)]


def imported(module: str, path: Path) -> set[str]:
    """The `vlm_spatial` modules `module` imports anywhere in its source (`from pkg import sub`
    counts as `pkg.sub` when that is a module)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        out.update(n for n in names if n == "vlm_spatial" or n.startswith("vlm_spatial."))
    return out


def test_no_module_imports_upward():
    upward = []
    for module, path in sorted(MODULES.items()):
        for target in sorted(imported(module, path)):
            if layer(target) > layer(module):
                upward.append(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})")
    assert not upward, "imports against the layering:\n  " + "\n  ".join(upward)


def test_the_checker_sees_upward_imports(tmp_path):
    """The parser resolves the import forms the package uses, so an upward edge cannot hide."""
    src = tmp_path / "mod.py"
    src.write_text("from vlm_spatial import checkpoint, parallel\nimport vlm_spatial.training.job\n"
                   "def f():\n    from vlm_spatial.evaluation import generate as gen\n    from . import vision\n")
    got = imported("vlm_spatial.models.mod", src)
    assert got == {"vlm_spatial.checkpoint", "vlm_spatial.parallel", "vlm_spatial.training.job",
                   "vlm_spatial.evaluation.generate", "vlm_spatial.models.vision"}
    assert [t for t in sorted(got) if layer(t) > layer("vlm_spatial.models.mod")] == [
        "vlm_spatial.checkpoint", "vlm_spatial.evaluation.generate", "vlm_spatial.training.job"]
