"""The house rules of the package layout (see ARCHITECTURE.md), checked on the source.

- Data flows one way: a module imports only from its own layer or lower ones, and the
  import graph has no cycle. Function-level and ``TYPE_CHECKING`` imports count.
- ``rasterio.open`` is called in one place, :mod:`geoseg.io` (``open_raster``).
- ``import geoseg`` loads neither torch, dask, distributed nor rasterio, and its public
  names are the real objects with their real signatures.
- No module changes ``os.environ`` when imported; each constant is defined once.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "geoseg"

#: Layers, bottom to top: a module may import from its own layer and the ones below.
LAYERS = {
    "geoseg._constants": 0, "geoseg._lazy": 0, "geoseg.errors": 0, "geoseg.grid": 0, "geoseg.classes": 0,
    "geoseg.progress": 0, "geoseg.allocator": 0, "geoseg._signals": 0,
    "geoseg._files": 1, "geoseg._dask": 1,
    "geoseg.io": 2, "geoseg.models": 2,
    "geoseg.vector": 3, "geoseg.synthetic": 3, "geoseg.spectra": 3,
    "geoseg.scene": 4, "geoseg.xr": 4,
    "geoseg.train": 5, "geoseg.batch": 5,
    "geoseg.cli": 6, "geoseg.__main__": 6,
    "geoseg": 7,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """geoseg modules that ``name`` imports anywhere in its source (``from pkg import mod`` resolved)."""
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists() else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "geoseg")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "geoseg":
                continue
            for a in node.names:
                out.add(f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod)
    return {m for m in out if m != name}


def _layer(module: str) -> int:
    best = max((k for k in LAYERS if module == k or module.startswith(k + ".")), key=len)
    return LAYERS[best]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, tree, known) for name, tree in mods.items()}


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    missing = [m for m in graph if not any(m == k or m.startswith(k + ".") for k in LAYERS if k != "geoseg")
               and m != "geoseg"]
    assert not missing, f"add these modules to LAYERS: {missing}"


def test_no_upward_imports(graph: dict[str, set[str]]) -> None:
    upward = sorted(
        (m, dep) for m, deps in graph.items() for dep in deps
        if _layer(dep) > _layer(m) and not (m == "geoseg" or dep.startswith(m + "."))
    )
    assert not upward, "imports that point up the layers:\n" + "\n".join(f"{m} -> {d}" for m, d in upward)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    # a package's __init__ may name its own modules (lazily); cycles are sought between modules
    edges = {m: {d for d in deps if d in graph and not d.startswith(m + ".") and not m.startswith(d + ".")}
             for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_geoseg_io_opens_rasters() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE / "io" or path.parent.parent == PACKAGE / "io":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "open" and isinstance(node.value, ast.Name) \
                    and node.value.id == "rasterio":
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not offenders, f"rasterio.open outside geoseg/io (use geoseg.io.raster.open_raster): {offenders}"


#: Modules that may rename or delete files, and what: outputs only through the output store.
RENAMERS = {
    "geoseg/io/store.py": "outputs: stage, commit, delete, clean",
    "geoseg/_files.py": "atomic local artefacts (models, checkpoints, reports)",
    "geoseg/io/cog.py": "the stripes (scratch) when damaged ones are rebuilt",
    "geoseg/io/faults.py": "its write probe",
    "geoseg/scene/journal.py": "the resume journal and the stripes (scratch)",
    "geoseg/batch/lock.py": "its lock file",
    "geoseg/synthetic.py": "synthetic scenes", "geoseg/models/mlm.py": "model artefacts",
    "geoseg/models/export.py": "model artefacts", "geoseg/models/mlm_item.py": "model artefacts",
}


def test_outputs_are_renamed_and_deleted_only_by_the_store() -> None:
    """No ``os.replace``/``os.rename``/``os.unlink``/``Path.unlink`` on outputs outside
    geoseg/io/store.py (the pipeline, the batch runner, to_cog and vectorize go through it)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        if rel in RENAMERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename", "unlink", "remove") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os" or \
                    isinstance(node, ast.Attribute) and node.attr == "unlink":
                offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"renames/deletes outside the output store (geoseg.io.store.OutputStore): {offenders}"


def test_no_environment_changes_at_import() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: functions may set it when called
            for sub in ast.walk(node):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    break
                if isinstance(sub, ast.Attribute) and sub.attr in ("setdefault", "update", "__setitem__", "pop") \
                        and isinstance(sub.value, ast.Attribute) and sub.value.attr == "environ":
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{sub.lineno}")
                if isinstance(sub, ast.Subscript) and isinstance(sub.ctx, ast.Store) \
                        and isinstance(sub.value, ast.Attribute) and sub.value.attr == "environ":
                    offenders.append(f"{path.relative_to(PACKAGE.parent)}:{sub.lineno}")
    assert not offenders, f"os.environ changed at import time: {offenders}"


def test_the_nodata_sentinel_is_defined_once() -> None:
    defs = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            value = getattr(node, "value", None)
            if isinstance(value, ast.Constant) and value.value == 255 and any(isinstance(t, ast.Name) for t in targets):
                defs.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert [d.split(":")[0] for d in defs] == ["geoseg/_constants.py"], f"255 defined more than once: {defs}"


def test_import_geoseg_is_light() -> None:
    code = (
        "import sys, geoseg; heavy = {'torch', 'dask', 'distributed', 'rasterio'} & set(sys.modules); "
        "print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_top_level_names_are_the_real_objects() -> None:
    import geoseg
    from geoseg.batch.runner import run_batch
    from geoseg.scene.pipeline import run_scene
    from geoseg.synthetic import synthesize
    from geoseg.vector.api import vectorize

    assert geoseg.run_scene is run_scene and geoseg.vectorize is vectorize
    assert geoseg.synthesize is synthesize and geoseg.run_batch is run_batch
    assert "size" in inspect.signature(geoseg.synthesize).parameters
    assert "catalog" in str(inspect.signature(geoseg.run_batch)) or inspect.signature(geoseg.run_batch).parameters
    assert set(geoseg.__all__) <= set(dir(geoseg))
    for name in geoseg.__all__:
        assert getattr(geoseg, name) is not None
    with pytest.raises(AttributeError):
        geoseg.no_such_name  # noqa: B018


def test_no_submodule_is_shadowed_by_an_exported_name() -> None:
    import importlib

    for init in PACKAGE.rglob("__init__.py"):
        package = _module_name(init)
        exported = set(getattr(importlib.import_module(package), "__all__", ()))
        submodules = {p.stem for p in init.parent.glob("*.py")} | {p.name for p in init.parent.iterdir() if p.is_dir()}
        assert not exported & submodules, f"{package} exports names of its own submodules: {exported & submodules}"
