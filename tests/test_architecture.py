"""docs/architecture.md against the code: every module of rlft/ is in its layer table, no module imports one from a
higher layer (function-level imports included, so there is no import cycle), no function is over 80 lines, and no
attribute is set on a tokenizer or model to pass information."""

import ast
import re
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "rlft"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(mod: str, path: Path, mods: dict) -> set[str]:
    """The rlft modules ``mod`` imports anywhere in its file."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            targets = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = ".".join(base[:len(base) - (n.level - 1)] + ([n.module] if n.module else []))
            else:
                base = n.module or ""
            targets = [base] + [f"{base}.{a.name}" for a in n.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != mod and t.startswith("rlft"):
                found.add(t)
    return found


def _layers() -> list[tuple[int, list[str]]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```text\n(layer .*?)```", text, re.S).group(1)
    out = []
    for line in block.strip().splitlines():
        m = re.match(r"layer (\d+)\s+\S+(?:,? \S+)*?\s{2,}(.*)", line)
        out.append((int(m.group(1)), m.group(2).split()))
    return out


def _layer_of(mod: str, layers) -> int | None:
    for n, patterns in layers:
        if any(fnmatch(mod, p) for p in patterns):
            return n
    return None


def test_every_module_has_a_layer_and_imports_only_downwards():
    mods, layers = _modules(), _layers()
    assert len(layers) == 7
    missing = [m for m in mods if _layer_of(m, layers) is None]
    assert not missing, f"modules not in docs/architecture.md's layer table: {missing}"
    upward = []
    for m, p in mods.items():
        for t in _imports(m, p, mods):
            if _layer_of(t, layers) > _layer_of(m, layers):
                upward.append(f"{m} (layer {_layer_of(m, layers)}) imports {t} (layer {_layer_of(t, layers)})")
    assert not upward, upward


def test_no_function_is_over_80_lines():
    long = []
    for p in PKG.rglob("*.py"):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80:
                long.append(f"{p.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not long, long
    assert len((PKG / "train.py").read_text().splitlines()) <= 300


def test_no_information_travels_in_attributes_set_on_tokenizers_or_models():
    hidden = re.compile(r"\b(tok|tokenizer|model)\.rlft_\w+\s*=|[\"']_(line|ids|text|prompt|row)[\"']")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in PKG.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if hidden.search(line)]
    assert not hits, hits
