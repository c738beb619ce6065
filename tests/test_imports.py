"""The import rules that keep the tree readable: every module sits in a layer, imports only its own layer or those
below it (at the top or inside a function), and the whole graph has no cycle; no module or package is named like an
installed package."""
import ast
import glob
import os

import pytest

from helpers import ROOT

# The layers, bottom to top. A module imports only modules of its own layer or of a layer below: the support
# package's foundations never import a chapter (file I/O below the model), the method chapters never import what
# assembles or runs them, and nothing but the claims suite imports its machinery. A new module has to be placed here.
LAYERS = [
    ("foundations", {"plumbing.settings", "plumbing.checkpoints", "plumbing.outputs", "plumbing.pictures",
                     "plumbing.hub", "plumbing.logs", "plumbing.fastpaths", "plumbing.stats",
                     "plumbing.stdlib_corpus", "plumbing.commplan", "plumbing.experts"}),
    ("method", {"toyworld", "data", "moe", "model", "encoders"}),
    ("assembly", {"plumbing.realdata", "plumbing.export", "plumbing.build", "plumbing.parallel"}),
    ("commands", {"train", "sample", "plan", "demo", "scaling", "routing", "plumbing.toyscores", "plumbing.memplan",
                  "plumbing.image_metrics"}),
    ("claims", {"claims", "findings.evaluation", "findings.declare", "findings.runs", "findings.report"}),
]
PACKAGES = ("plumbing", "findings")


def modules(root=ROOT):
    """{dotted name: path} of the project's modules: the .py files at the root and in its packages."""
    found = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(root, "*.py"))}
    for package in PACKAGES:
        for p in glob.glob(os.path.join(root, package, "*.py")):
            if not p.endswith("__init__.py"):
                found[f"{package}.{os.path.basename(p)[:-3]}"] = p
    return found


def import_graph(root=ROOT):
    """{module: set of this project's modules it imports}, reading every import statement, module-level or inside
    functions: `import a.b`, `from a.b import c`, `from a import b` (b a module of package a) all count."""
    mods = modules(root)
    graph = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def find_cycle(graph):
    """One cycle as a list of modules [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        state[m] = "done"
        stack.pop()
        return None
    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def upward_imports(graph, layers=LAYERS):
    """["a (layer) imports b (a higher layer)", ...] for every import that goes up."""
    level = {m: i for i, (_, names) in enumerate(layers) for m in names}
    return [f"{m} ({layers[level[m]][0]}) imports {n} ({layers[level[n]][0]})"
            for m in sorted(graph) for n in sorted(graph[m]) if level[n] > level[m]]


def test_the_import_graph_is_acyclic():
    graph = import_graph()
    assert {"model", "moe", "data", "train", "sample", "plumbing.build", "findings.evaluation"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_has_a_layer_and_no_import_goes_up():
    graph = import_graph()
    placed = set().union(*(names for _, names in LAYERS))
    assert set(graph) == placed, f"not in LAYERS: {sorted(set(graph) - placed)}; gone: {sorted(placed - set(graph))}"
    assert upward_imports(graph) == []


def test_the_rules_catch_a_cycle_and_an_upward_import(tmp_path):
    """On a made-up tree: a cycle through a function-level import inside the package, and a foundation that
    imports a chapter."""
    (tmp_path / "plumbing").mkdir()
    (tmp_path / "a.py").write_text("import plumbing.b\n")
    (tmp_path / "plumbing" / "b.py").write_text("def f():\n    from plumbing import c\n")
    (tmp_path / "plumbing" / "c.py").write_text("import os\nfrom a import x\n")
    (tmp_path / "d.py").write_text("import a\n")
    graph = import_graph(str(tmp_path))
    assert graph == {"a": {"plumbing.b"}, "plumbing.b": {"plumbing.c"}, "plumbing.c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "plumbing.b", "plumbing.c", "a"]
    layers = [("foundations", {"plumbing.b", "plumbing.c"}), ("method", {"a", "d"})]
    assert upward_imports(graph, layers) == ["plumbing.c (foundations) imports a (method)"]


def test_no_project_module_shadows_an_installed_package():
    """A top-level module or package named like an installed package hides it from every library that imports it
    whenever the repository's root is on sys.path (transformers 5 imports the PyPI package `kernels`)."""
    import subprocess
    import sys
    names = sorted({m.split(".")[0] for m in modules()} | {"tests"})
    probe = ("import importlib.util, sys\n"
             "print(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", probe, *names], cwd="/", env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert found == [], f"these project modules share their name with an installed package: {found}"


def test_reference_libraries_import_after_every_project_module():
    """The libraries the encoders are checked against still import when every project module was imported first."""
    import importlib
    for name in sorted(modules()):
        importlib.import_module(name)
    from transformers import Dinov2Model, SiglipVisionModel, ViTMAEForPreTraining   # noqa: F401
    diffusers = pytest.importorskip("diffusers")
    assert diffusers.AutoencoderKL is not None
