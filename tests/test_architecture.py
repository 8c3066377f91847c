"""The package's shape (docs/architecture.md), checked on its source: which layer may import which,
what stays at the top, how large a module may grow. Fast: the source is parsed, nothing imported."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ray_grok"
# Each layer imports only the layers after it: cli -> cluster -> sweep -> results -> trial.
LAYERS = ("cli", "cluster", "sweep", "results", "trial")
SHARED = {"errors", "io", "compat"}  # the modules at the top, which every layer may use
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """{dotted name: path} of every module of ray_grok ('ray_grok.sweep.grid', ...)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module PATH imports, at any depth of its code (lazy imports too), as absolute names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}  # `from . import compat` imports a module
    return found


def layer(name: str) -> str:
    """'trial' for ray_grok.trial.run, 'io' for ray_grok.io, '' for the package itself."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


ALL = modules()


@pytest.mark.parametrize("name", sorted(ALL))
def test_imports_go_one_way_down_the_layers(name):
    own = layer(name)
    allowed = set(LAYERS[LAYERS.index(own) + 1:]) if own in LAYERS else set()
    allowed |= SHARED | {"", own}
    wrong = sorted(i for i in imports(name, ALL[name])
                   if i.startswith("ray_grok") and i in ALL and layer(i) not in allowed)
    assert not wrong, f"{name} ({own or 'top'}) imports {wrong}; it may import only {sorted(allowed - {''})}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if layer(n) in ("trial", "results")))
def test_trial_and_results_never_import_ray_or_submitit(name):
    outside = {i.split(".")[0] for i in imports(name, ALL[name])}
    assert not outside & {"ray", "submitit"}, f"{name} imports {sorted(outside & {'ray', 'submitit'})}"


@pytest.mark.parametrize("name", sorted(ALL))
def test_only_compat_touches_private_names_of_ray_and_submitit(name):
    private = sorted(i for i in imports(name, ALL[name])
                     if i.split(".")[0] in ("ray", "submitit") and any(p.startswith("_") for p in i.split(".")))
    assert name == "ray_grok.compat" or not private, f"{name} imports {private}: go through ray_grok.compat"


def test_at_most_four_modules_stay_at_the_top():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 4, top
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS)


@pytest.mark.parametrize("name", sorted(ALL))
def test_no_module_grows_past_the_limit(name):
    lines = len(ALL[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (more than {MAX_LINES}): split it by job"
