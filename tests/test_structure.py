"""The package's imports flow one way: leaves <- data <- model <- infer <- train <- main."""

from __future__ import annotations

import ast
import os

from conftest import ROOT

PACKAGE = "cityscapes_unet"
#: Layer of each project module (by prefix); a module imports only its own
#: layer or lower ones.
LAYERS = (
    ("utils_func", 0),
    (f"{PACKAGE}.errors", 0),
    (f"{PACKAGE}.io", 0),
    (f"{PACKAGE}.plots", 0),
    (f"{PACKAGE}.startup", 0),
    (f"{PACKAGE}.settings", 0),
    (f"{PACKAGE}.resize", 0),
    (f"{PACKAGE}.data", 1),
    ("segmentation_model", 2),
    ("model_arch", 2),
    (f"{PACKAGE}.infer", 3),
    (f"{PACKAGE}.train", 4),
    ("main", 5),
)
#: Imports inside functions that are there for a reason other than a cycle:
#: the tf.data pipeline and TFDS import TensorFlow, which the NumPy path
#: must not load; main.py loads a wing only when its command runs.
LAZY_ALLOWED = {
    f"{PACKAGE}.data.source": {f"{PACKAGE}.data.tf_pipeline", f"{PACKAGE}.data.tfds"},
    "main": {"*"},
}


def project_modules() -> dict[str, str]:
    """Module name -> path, for the root modules and the package."""
    mods = {}
    for name in ("main", "segmentation_model", "utils_func", "model_arch"):
        mods[name] = os.path.join(ROOT, name + ".py")
    for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3]
                mod = rel.replace(os.sep, ".").removesuffix(".__init__")
                mods[mod] = os.path.join(folder, f)
    return mods


def layer(mod: str) -> int:
    for prefix, n in LAYERS:
        if mod == prefix or mod.startswith(prefix + "."):
            return n
    raise AssertionError(f"{mod} has no layer in LAYERS")


def imports_of(path: str, mods: dict[str, str]) -> list[tuple[str, list[str], bool]]:
    """`(imported module, names, inside a function)` for each project import."""
    tree = ast.parse(open(path).read())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [a.name for a in child.names]
                # `from pkg import module` imports the module itself.
                subs = [f"{child.module}.{n}" for n in names if f"{child.module}.{n}" in mods]
                for sub in subs:
                    found.append((sub, [], inner))
                if child.module in mods and len(subs) < len(names):
                    found.append(
                        (child.module, [n for n in names if f"{child.module}.{n}" not in mods], inner)
                    )
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name in mods:
                        found.append((a.name, [], inner))
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, list[tuple[str, list[str], bool]]]:
    mods = project_modules()
    return {m: [i for i in imports_of(p, mods) if i[0] != m and i[0] != PACKAGE] for m, p in mods.items()}


def test_every_module_has_a_layer_and_imports_none_above_it():
    upward = [
        f"{m} (layer {layer(m)}) imports {dep} (layer {layer(dep)})"
        for m, deps in graph().items()
        for dep, _, _ in deps
        if layer(dep) > layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    edges = {m: {dep for dep, _, _ in deps} for m, deps in graph().items()}
    state: dict[str, int] = {}
    cycles = []

    def walk(m, stack):
        state[m] = 1
        for dep in sorted(edges.get(m, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                walk(dep, stack + [dep])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            walk(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_private_name_crosses_a_module():
    crossing = [
        f"{m} imports {dep}.{n}"
        for m, deps in graph().items()
        for dep, names, _ in deps
        for n in names
        if n.startswith("_")
    ]
    assert not crossing, "\n".join(crossing)


def test_imports_inside_functions_have_a_reason():
    hidden = [
        f"{m} imports {dep} inside a function"
        for m, deps in graph().items()
        for dep, _, inner in deps
        if inner and not ({"*", dep} & LAZY_ALLOWED.get(m, set()))
    ]
    assert not hidden, "\n".join(hidden)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path, monkeypatch):
    """The walk above is not vacuous: it finds the project's real imports."""
    edges = graph()
    assert (f"{PACKAGE}.errors", [], False) not in edges["utils_func"]
    assert any(dep == f"{PACKAGE}.train.run" for dep, _, _ in edges["main"])
    assert any(dep.startswith(f"{PACKAGE}.data") for dep, _, _ in edges[f"{PACKAGE}.train.run"])
    with open(tmp_path / "bad.py", "w") as f:
        f.write("def f():\n    from cityscapes_unet.train import run\n")
    mods = project_modules()
    assert imports_of(str(tmp_path / "bad.py"), mods) == [(f"{PACKAGE}.train.run", [], True)]


def test_test_files_have_unique_names():
    # The test folders are not packages, so pytest imports each test file by
    # its base name: two files of one name in different folders break collection.
    seen: dict[str, str] = {}
    for folder, _, files in os.walk(os.path.join(ROOT, "tests")):
        for f in files:
            if f.startswith("test_") and f.endswith(".py"):
                path = os.path.relpath(os.path.join(folder, f), ROOT)
                assert f not in seen, f"{path} and {seen[f]} share a name"
                seen[f] = path
