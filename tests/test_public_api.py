"""The package's public functions stay functions, whatever submodules get imported."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import ted


def test_no_submodule_shadows_a_public_function():
    names = {info.name for info in pkgutil.iter_modules(ted.__path__)}
    assert not names & set(ted._API), "a submodule named like an API function replaces it once imported"


def test_api_functions_survive_importing_every_submodule():
    # What broke `ted.demo()` the second time: the first call imported the module ted/demo.py, which Python
    # then bound as `ted.demo`.
    for info in pkgutil.iter_modules(ted.__path__):
        if info.name != "__main__":  # `python -m ted` runs the CLI on import
            importlib.import_module(f"ted.{info.name}")
    for name in ted._API:
        assert callable(getattr(ted, name)) and not isinstance(getattr(ted, name), type(ted)), name


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys; from ted.cli import main; main(['--version']); main(['--help']); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False"


def test_every_option_of_ted_has_help_text():
    from dataclasses import fields

    from ted.options import COMMAND_OPTIONS

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
