"""The package's shape: folders by stage, data flowing one way, no import circles, no module over 400 lines, one public API."""

import ast
import warnings
from pathlib import Path

import pytest

import lens_digits as ld

PACKAGE = Path(ld.__file__).parent
STAGES = {  # a module may import its own stage and earlier ones, never a later one
    "errors": 0,
    "settings": 0,
    "storage": 0,
    "_aliases": 0,
    "_stack": 0,
    "problems": 1,
    "model": 2,
    "testing": 2,
    "residuals": 3,
    "methods": 4,
    "results": 5,
    "builtin": 5,
    "runs": 6,
    "cli": 7,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports_of(path: Path) -> set[str]:
    """Every lens_digits module a file imports, at the top or inside functions (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lens_digits"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lens_digits")}
    known = modules()
    return {m for m in found if m in known}


def stage(module: str) -> int:
    part = module.split(".")[1] if module != "lens_digits" else "errors"
    return STAGES[part]


def test_every_module_belongs_to_a_stage_and_none_is_over_400_lines():
    for name, path in modules().items():
        if name == "lens_digits":
            continue
        assert name.split(".")[1] in STAGES, f"{name} is in no stage folder"
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{name} has {lines} lines"


def test_data_flows_one_way_and_there_are_no_import_circles():
    graph = {name: imports_of(path) - {name} for name, path in modules().items() if name != "lens_digits"}
    for name, deps in graph.items():
        for dep in deps:
            if dep == "lens_digits":
                continue
            assert stage(dep) <= stage(name), f"{name} (stage {stage(name)}) imports the later {dep} (stage {stage(dep)})"
    # no circles: repeatedly remove modules that import nothing left
    left = {n: {d for d in deps if d in graph} for n, deps in graph.items()}
    while left:
        free = [n for n, deps in left.items() if not deps - {n}]
        assert free, f"import circle among {sorted(left)}"
        for n in free:
            del left[n]
        for deps in left.values():
            deps.difference_update(free)


def test_the_model_is_wrapped_only_at_entry_points():
    entry = {
        "lens_digits.runs.sweep",  # run_sweep and sweep
        "lens_digits.runs.fit",  # refit
        "lens_digits.runs.ray_shards",  # a Ray worker loading its model
        "lens_digits.residuals.collect",  # collect_residuals, public
        "lens_digits.model.greedy",  # greedy_answers, public (the model card's)
        "lens_digits.methods.lenses.base",  # Lens.from_model, public
        "lens_digits.methods.lenses.tuned",  # TunedLens.from_model and load, public
        "lens_digits.methods.lenses.jacobian",  # JacobianLens.from_model and load, public
    }
    wrapping = {
        name for name, path in modules().items() if "ModelAdapter.wrap(" in path.read_text() and name != "lens_digits.model.adapter"
    }
    assert wrapping <= entry, wrapping - entry


def test_dir_is_the_public_api_and_the_documented_submodules():
    assert sorted(dir(ld)) == sorted(set(ld.__all__) | set(ld.SUBMODULES))
    for name in ld.__all__:
        assert getattr(ld, name) is not None
    assert callable(ld.run_sweep) and not isinstance(ld.run_sweep, type(ld))  # a function, not a module of that name


@pytest.mark.parametrize(
    ("old", "name", "new"),
    [
        ("lens_digits.grid", "AccuracyGrid", "lens_digits.results.grid"),
        ("lens_digits.decoders", "LogitLens", "lens_digits.methods"),
        ("lens_digits.decoders.probes", "LinearProbe", "lens_digits.methods.probes.linear"),
        ("lens_digits.config", "SweepConfig", "lens_digits.runs.config"),
        ("lens_digits.carries", "add_column_breakdown", "lens_digits.methods.scores"),
        ("lens_digits.rundir", "Reservation", "lens_digits.storage.reservation"),
    ],
)
def test_old_module_paths_still_import_with_a_deprecation_warning(old, name, new):
    import importlib
    import sys

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_old_public_names_warn_and_still_work():
    with pytest.warns(DeprecationWarning, match="register_decoder is deprecated"):
        register = ld.register_decoder
    assert register is ld.register_method
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ld.register_method  # noqa: B018 - the new name is silent
