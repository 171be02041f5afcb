"""The app's modules import one way: no circle, and no import hidden inside a function to
break one. Tasks call steps and services; services send work through orders/dispatch.py,
which names tasks without importing them."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "orders"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text())
    return found


# Parsed once, while the test modules are collected: CPython 3.11's AST constructor can
# raise "SystemError: AST constructor recursion depth mismatch" when it runs while other
# threads do (cpython#106905), and by the time this test runs the suite has a Celery
# worker and the sandbox server running in threads of this process.
MODULES = _modules()


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    package = name if name == "orders" else name.rsplit(".", 1)[0]
    if (PACKAGE / Path(*name.split(".")[1:]) / "__init__.py").exists():
        package = name
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names}
            if node.module or not submodules <= known:
                targets.add(module)  # `from . import x` names x, not the package
            targets |= submodules
        elif isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
    return {t for t in targets if t in known and t != name}


def test_the_import_graph_of_the_app_has_no_circle():
    modules = MODULES
    graph = {name: _imports(name, tree, set(modules)) for name, tree in modules.items()}
    state: dict[str, str] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []
    # The direction the README describes.
    assert "orders.tasks" not in graph["orders.services"] | graph["orders.workflow"]
    assert graph["orders.state"] <= {
        "orders.models",
        "orders.errors",
        "orders.metrics",
        "orders.outbox",
        "orders.statements",
    }
    # The hot path's SQL builds on Django alone: anything in the app may use it.
    assert not {name for name in graph["orders.statements"] if name.startswith("orders.")}
    # The outbox is written inside order_transition: it must not build on the state machine.
    assert "orders.state" not in graph["orders.outbox"]


def test_no_module_of_the_app_imports_the_app_inside_a_function():
    lazy = []
    for name, tree in MODULES.items():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and (
                    node.level or (node.module or "").startswith("orders")
                ):
                    if name == "orders.apps":  # AppConfig.ready registers the checks
                        continue
                    lazy.append(f"{name}:{node.lineno}")
    assert lazy == []


def test_the_services_import_on_their_own():
    code = "import django; django.setup(); import orders.services, orders.steps, orders.tasks"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"DJANGO_SETTINGS_MODULE": "config.settings.test", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
