"""The layout docs/guide.md describes, kept: the import layers (import-linter's contracts in pyproject.toml), small
modules, classes and functions, and capabilities read from the contracts, never probed."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "md4"
LIMITS = {"file": 450, "class": 220, "function": 80}  # lines
# The modules that may look at an attribute by name: the contracts (a plain callable is a denoiser without
# capabilities; a user's dataset need not declare ``prepared``), and the map of md4 0.2's module paths.
MAY_PROBE = {"nn/contract.py", "data/batches.py", "_moved.py"}


def sources() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(SOURCE)), ast.parse(p.read_text())) for p in sorted(SOURCE.rglob("*.py"))]


def test_modules_classes_and_functions_stay_small():
    too_long = []
    for name, tree in sources():
        lines = max((node.end_lineno or 0) for node in tree.body) if tree.body else 0
        if lines > LIMITS["file"]:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(tree):
            kind = {ast.ClassDef: "class", ast.FunctionDef: "function", ast.AsyncFunctionDef: "function"}.get(
                type(node)
            )
            if kind and node.end_lineno - node.lineno + 1 > LIMITS[kind]:
                too_long.append(f"{name}:{node.lineno} {kind} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long


def test_no_attribute_probes_outside_the_contracts():
    """``getattr(x, "name")`` / ``hasattr(x, "name")`` with a literal name is how capabilities used to be probed;
    a capability is a declared field now (reading a field by a computed name, as the config does, is fine)."""
    probes = []
    for name, tree in sources():
        if name in MAY_PROBE:
            continue
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                probes.append(f"{name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    assert not probes, probes


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")
def test_layers_hold():
    """No upward import and no import circle (lazy imports included): import-linter's contracts."""
    root = SOURCE.parents[1]
    result = subprocess.run(
        [shutil.which("lint-imports"), str(root / "pyproject.toml")],
        cwd=root,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root / "src"), "PATH": str(Path(sys.executable).parent)},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
