"""The modules form a DAG: no module imports, at the top or inside a function, one that imports it back."""
import ast
import glob
import os
from helpers import ROOT



def import_graph(root=ROOT):
    """{module: set of this project's modules it imports}, for the .py files at the root, reading every import
    statement, module-level or inside functions."""
    modules = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(root, "*.py"))}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        graph[name] = {m for m in found if m in modules and m != name}
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


def test_the_import_graph_is_acyclic():
    graph = import_graph()
    assert {"model", "moe", "data", "train", "sample"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from c import g\n")
    (tmp_path / "c.py").write_text("import os\nfrom a import x\n")
    (tmp_path / "d.py").write_text("import a\n")
    graph = import_graph(str(tmp_path))
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_no_project_module_shadows_an_installed_package():
    """A top-level module named like an installed package hides it from every library that imports it whenever the
    repository's root is on sys.path (transformers 5 imports the PyPI package `kernels`)."""
    import subprocess
    import sys
    names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "*.py")))
    probe = ("import importlib.util, sys\n"
             "print(' '.join(n for n in sys.argv[1:] if importlib.util.find_spec(n) is not None))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", probe, *names], cwd="/", env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert found == [], f"these project modules share their name with an installed package: {found}"


def test_reference_libraries_import_after_every_project_module():
    """The libraries the encoders are checked against still import when every project module was imported first."""
    import importlib
    import pytest
    for path in sorted(glob.glob(os.path.join(ROOT, "*.py"))):
        importlib.import_module(os.path.basename(path)[:-3])
    from transformers import Dinov2Model, SiglipVisionModel, ViTMAEForPreTraining   # noqa: F401
    diffusers = pytest.importorskip("diffusers")
    assert diffusers.AutoencoderKL is not None
