"""The public surface: keyword-only options, a clean seam between the packages, no cycles.

Checked by introspection (signatures) and by reading the source (imports):
  * no public function, method or class constructor of `mtz`, `nwv`, `models` or
    `data` takes more than 4 positional parameters (arrays first, options keyword-only);
  * `nwv` imports from `mtz` only names in `mtz.__all__`;
  * no module imports (or reads) another module's `_private` name;
  * the project's modules import each other without a cycle;
  * no benchmark re-implements a library function.
"""
import ast
import dataclasses
import enum
import importlib
import importlib.util
import inspect
import os
import pkgutil

import pytest

from tests.conftest import REPO

PACKAGES = ("mtz", "nwv", "models", "data")
MAX_POSITIONAL = 4


def _modules(package):
    pkg = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(pkg.__path__, f"{package}.")]
    return [importlib.import_module(n) for n in names]


def _positional(fn) -> int:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds for p in signature.parameters.values())


def _public_callables():
    """(qualified name, callable, positional parameters allowed besides self/cls)."""
    for package in PACKAGES:
        for module in _modules(package):
            for name, obj in vars(module).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                    continue
                where = f"{module.__name__}.{name}"
                if inspect.isfunction(obj):
                    yield where, obj, 0
                elif inspect.isclass(obj) and not issubclass(obj, enum.Enum):
                    if dataclasses.is_dataclass(obj) or "__init__" in vars(obj):
                        yield f"{where}()", obj.__init__, 1
                    for attr, member in vars(obj).items():
                        if attr.startswith("_"):
                            continue
                        if isinstance(member, (classmethod, staticmethod)):
                            yield f"{where}.{attr}", member.__func__, \
                                int(isinstance(member, classmethod))
                        elif inspect.isfunction(member):
                            yield f"{where}.{attr}", member, 1


def test_public_signatures_take_at_most_four_positional_parameters():
    offenders = [f"{where}: {_positional(fn) - skip} positional"
                 for where, fn, skip in _public_callables()
                 if _positional(fn) - skip > MAX_POSITIONAL]
    assert not offenders, "\n".join(offenders)


def _python_files(*folders):
    for folder in folders:
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for file in sorted(files):
                if file.endswith(".py"):
                    yield os.path.join(root, file)


def _module_name(path):
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _tree(path):
    with open(path) as handle:
        return ast.parse(handle.read(), path)


def _is_project(name):
    return name.split(".")[0] in PACKAGES


def test_nwv_imports_only_public_mtz_names():
    import mtz
    offenders = []
    for path in _python_files("nwv"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtz"):
                if node.module != "mtz":
                    offenders.append(f"{path}: from {node.module} import ...")
                offenders += [f"{path}: from mtz import {a.name}" for a in node.names
                              if a.name not in mtz.__all__]
            elif isinstance(node, ast.Import):
                offenders += [f"{path}: import {a.name}" for a in node.names
                              if a.name.startswith("mtz.")]
    assert not offenders, "\n".join(offenders)


def _is_module(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, AttributeError, ValueError):
        return False


def _private(name):
    return name.startswith("_") and not name.startswith("__")


def test_no_module_uses_another_modules_private_names():
    offenders = []
    for path in _python_files(*PACKAGES, "scripts"):
        modules = set()                       # local names bound to project modules
        tree = _tree(path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                project = _is_project(node.module) or node.level > 0
                for alias in node.names:
                    if project and _private(alias.name):
                        offenders.append(f"{path}: from {node.module} import {alias.name}")
                    full = f"{node.module}.{alias.name}"
                    if _is_project(full) and _is_module(full):
                        modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if _is_project(alias.name):
                        modules.add(alias.asname or alias.name.split(".")[0])
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr)
                    and isinstance(node.value, ast.Name) and node.value.id in modules):
                offenders.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def _import_graph():
    """{module: set of project modules it imports anywhere in its source}."""
    graph = {}
    for path in _python_files(*PACKAGES):
        name = _module_name(path)
        edges = graph.setdefault(name, set())
        package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if _is_project(a.name))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                if not _is_project(base):
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    edges.add(full if _is_module(full) else base)
    return graph


def test_no_import_cycle():
    graph = _import_graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt == node:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


# Functions only the benchmark helper module may define (one copy for every benchmark).
BENCH_HELPERS = {"trained", "peak_rss_mb", "evict_from_page_cache",
                 "load_from_disk", "switch_latency"}


def test_benchmarks_do_not_reimplement_library_functions():
    library = {where.rsplit(".", 1)[1] for where, fn, _ in _public_callables()
               if inspect.isfunction(fn) and fn.__qualname__ == fn.__name__}
    offenders = []
    for path in _python_files("scripts"):
        file = os.path.basename(path)
        if not (file.startswith("bench_") or file == "_bench.py"):
            continue
        for node in _tree(path).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            if node.name in library and node.name != "main":
                offenders.append(f"{file}: def {node.name} (a library function)")
            if node.name in BENCH_HELPERS and file != "_bench.py":
                offenders.append(f"{file}: def {node.name} (belongs in scripts/_bench.py)")
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_function_documents_args_returns_raises(package):
    """Functions in a package's __all__ state their arguments and results."""
    pkg = importlib.import_module(package)
    missing = []
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        if not inspect.isfunction(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "cls")]
        if params and "Args:" not in doc:
            missing.append(f"{package}.{name}: no Args")
        if "Returns:" not in doc and "Yields:" not in doc:
            missing.append(f"{package}.{name}: no Returns")
        if "Raises:" not in doc:
            missing.append(f"{package}.{name}: no Raises")
    assert not missing, "\n".join(missing)
