"""The package's public functions stay functions, whatever submodules get imported."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import ted


def test_no_submodule_shadows_a_public_function():
    names = {info.name for info in pkgutil.iter_modules(ted.__path__)}
    assert not names & set(ted._API), "a submodule named like an API function replaces it once imported"


def test_api_functions_survive_importing_every_submodule():
    # What broke `ted.demo()` the second time: the first call imported the module ted/demo.py, which Python
    # then bound as `ted.demo`.
    for info in pkgutil.walk_packages(ted.__path__, "ted."):
        if not info.name.endswith("__main__"):  # `python -m ted` runs the CLI on import
            importlib.import_module(info.name)
    for name in ted._API:
        assert callable(getattr(ted, name)) and not isinstance(getattr(ted, name), type(ted)), name


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys; from ted.cli.main import main; main(['--version']); main(['--help']); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_every_option_of_ted_has_help_text():
    from dataclasses import fields

    from ted.settings.options import COMMAND_OPTIONS

    missing = {
        f"{group.__name__}.{f.name}"
        for groups in COMMAND_OPTIONS.values()
        for group in groups
        for f in fields(group)
        if not f.name.startswith("_") and not (f.metadata.get("help") or "").strip()
    }
    assert not missing, f"options without a help string: {sorted(missing)}"


def test_package_declares_its_type_hints():
    from pathlib import Path

    assert (Path(ted.__file__).parent / "py.typed").is_file()


def test_old_flat_import_paths_still_work_with_a_warning():
    import warnings

    from ted._moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message) for w in caught), old
        real = importlib.import_module(new)
        public = [name for name in vars(real) if not name.startswith("_")]
        assert public and all(getattr(module, name) is getattr(real, name) for name in public), old
    from ted.filters import TaskAwareFilters  # the README of 0.1 documented this path
    from ted.method.filters import TaskAwareFilters as moved

    assert TaskAwareFilters is moved


def _package_modules() -> dict[str, Path]:
    root = Path(ted.__file__).parent
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The ted modules a module imports when it is imported (imports inside functions run later: not counted)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def test_no_import_cycles():
    modules = _package_modules()
    graph = {name: _top_level_imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*trail, name, dep])
            if dep not in state:
                visit(dep, [*trail, name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_module_opens_with_one_sentence_on_its_job():
    missing = [name for name, path in _package_modules().items() if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_no_module_is_much_over_300_lines():
    long = {name: n for name, path in _package_modules().items() if (n := len(path.read_text().splitlines())) > 320}
    assert not long, f"split these by job (issue 10: one job per module, about 300 lines at most): {long}"
