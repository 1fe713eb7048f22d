"""The layers of docs/architecture.md, read from the source: imports run one way,
mec_client (alone) and mec_core <- serving <- mec_platform <- api, worker, and no
module-level import cycle; the client stays small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# each package and the folder it lives in (mec_client is a distribution of its own)
PACKAGES = {"mec_client": ROOT / "client", "mec_core": ROOT, "serving": ROOT,
            "mec_platform": ROOT, "api": ROOT, "worker": ROOT}
# what each package may import, besides itself and third-party code
ALLOWED = {"mec_client": set(), "mec_core": set(), "serving": {"mec_core"},
           "mec_platform": {"mec_client", "mec_core", "serving"},
           "api": {"mec_client", "mec_core", "serving", "mec_platform"},
           "worker": {"mec_client", "mec_core", "serving", "mec_platform"}}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in (folder / package).rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module an import of `name` loads (the longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path, module: str, top_level_only: bool) -> set[str]:
    """Project modules imported by `path`: everywhere, or at module level only (the
    imports that run when the module is imported; `if TYPE_CHECKING:` blocks excluded)."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if not top_level_only else _top_level(tree.body)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in nodes:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{a.name}" for a in node.names]
        out |= {t for t in map(_target, names) if t and t != module}
    return out


def _top_level(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        yield node
        for child in ("body", "orelse", "handlers", "finalbody"):
            yield from _top_level(getattr(node, child, []) or [])


def test_imports_run_one_way():
    wrong = []
    for module, path in MODULES.items():
        package = module.split(".")[0]
        for target in _imports(path, module, top_level_only=False):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports against the layers of docs/architecture.md:\n" + \
        "\n".join(sorted(wrong))


def test_no_module_level_import_cycle():
    graph = {m: _imports(p, m, top_level_only=True) for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "module-level import cycles:\n" + "\n".join(cycles)


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The checks above would pass vacuously if the walk missed imports."""
    path = tmp_path / "m.py"
    path.write_text("import mec_core.loss\ndef f():\n    from api import schemas\n"
                    "from . import models\n")
    assert _imports(path, "mec_core.m", top_level_only=False) == {
        "mec_core.loss", "api.schemas", "mec_core.models"}
    assert _imports(path, "mec_core.m", top_level_only=True) == {
        "mec_core.loss", "mec_core.models"}


def test_mec_db_upgrade_does_not_import_torch(tmp_path):
    code = ("import sys\nfrom mec_client.cli import main\n"
            "try:\n    main(['db', 'upgrade'])\nexcept SystemExit as e:\n    assert not e.code\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"MEC_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"},
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "mec.db").is_file()


def _import_cost(statement: str, cwd: Path) -> tuple[float, float]:
    """(modules added, seconds) of running `statement` in a fresh interpreter: the median
    of 3 runs. The interpreter's own start is not counted; torch must stay out."""
    code = (f"import sys, time\nbare = len(sys.modules)\nt = time.perf_counter()\n"
            f"{statement}\nseconds = time.perf_counter() - t\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "print(len(sys.modules) - bare, seconds)\n")
    runs = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=cwd, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append([float(x) for x in done.stdout.split()])
    return sorted(r[0] for r in runs)[1], sorted(r[1] for r in runs)[1]


def test_importing_the_client_is_small_fast_and_writes_nothing(tmp_path):
    """What an app that only wants embed() and search() pays for `from mec_client import
    Client`: under 150 modules (62 on Python 3.11; the server's import was 831 modules in
    1 s), pydantic not loaded until an answer is parsed (pydantic alone is 149 modules for
    one model class), less time than pydantic's one class (0.03-0.06 s against 0.10-0.17 s
    side by side on a 2-core machine), no file created, no torch. Its commands load no
    torch either."""
    _, floor_seconds = _import_cost(
        "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int", tmp_path)
    modules, seconds = _import_cost(
        "from mec_client import Client\nClient(url='http://127.0.0.1:9', key='k')\n"
        "assert 'pydantic' not in sys.modules", tmp_path)
    assert modules < 150, f"mec_client: {modules:.0f} modules"
    assert seconds < floor_seconds, (seconds, floor_seconds)
    _import_cost("import mec_client.cli", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_test_modules_have_unique_basenames():
    """pytest imports test modules by basename (rootdir mode): a second tests/**/test_x.py
    stops the whole run at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
