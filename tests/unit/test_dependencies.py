"""Every import is declared in pyproject.toml, optional packages are imported lazily, and requirements.lock
pins what pyproject asks for: a fresh machine installs what the code needs, and the plain install runs."""
from __future__ import annotations

import ast
import functools
import importlib.metadata as md
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RUNTIME = ("app", "config", "workers", "tasks", "proto", "migrations")  # what `pip install warmpool` ships
TOOLS = ("tests", "bench", "scripts")  # need the test extra
OURS = set(RUNTIME) | set(TOOLS)
# The official clients the e2e tests drive live apart from the project (`make clients`, .clients/), each in
# its own subprocess; `common` is tests/e2e/clients/common.py, imported beside them.
CLIENT_IMPORTS = {"gitpod", "ona_sdk", "common"}
EXTRAS_OF_THE_ENGINE = ("dev", "flower", "kubernetes", "unikraft")


def requirement_names(reqs: list[str]) -> set[str]:
    names = set()
    for text in reqs:
        req = Requirement(text)
        if canonicalize_name(req.name) != "warmpool":  # warmpool[flower] inside another extra
            names.add(canonicalize_name(req.name))
    return names


CORE = requirement_names(PYPROJECT["dependencies"])
EXTRAS = {name: requirement_names(reqs) for name, reqs in PYPROJECT["optional-dependencies"].items()}


def imports(folder: str) -> list[tuple[str, str, bool]]:
    """(top-level module, file:line, at module level?) for every absolute import under `folder`."""
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if ".venv" in path.parts or ".clients" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(n) for n in tree.body}
        for guard in tree.body:  # `if TYPE_CHECKING:` / `try:` at module level still run at import
            if isinstance(guard, (ast.If, ast.Try)):
                top_level |= {id(n) for n in ast.walk(guard)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OURS:
                    found.append((top, f"{path.relative_to(ROOT)}:{node.lineno}", id(node) in top_level))
    return found


@functools.cache
def distributions(module: str) -> set[str]:
    return {canonicalize_name(d) for d in _packages_distributions().get(module, [])}


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()


def test_every_runtime_import_is_declared_and_optional_ones_are_lazy():
    optional = set().union(*(EXTRAS[e] for e in EXTRAS_OF_THE_ENGINE))
    problems = []
    for folder in RUNTIME:
        for module, where, eager in imports(folder):
            dists = distributions(module)
            if not dists:
                problems.append(f"{where}: {module} comes from no installed distribution")
            elif dists & CORE:
                continue
            elif dists & optional and not eager:
                continue
            elif dists & optional:
                problems.append(f"{where}: {module} is an extra's ({sorted(dists)}) but imported at module level: "
                                "import it inside the function that needs it (app.extras.require)")
            else:
                problems.append(f"{where}: {module} ({sorted(dists)}) is not declared in pyproject.toml")
    assert not problems, "\n".join(problems)


def test_every_tool_and_test_import_is_declared():
    declared = CORE.union(*EXTRAS.values())
    problems = []
    for folder in TOOLS:
        for module, where, _ in imports(folder):
            if module in CLIENT_IMPORTS and where.startswith("tests/e2e/clients/"):
                continue
            dists = distributions(module)
            if not dists & declared:
                problems.append(f"{where}: {module} ({sorted(dists) or 'not installed'}) is not declared in pyproject.toml")
    assert not problems, "\n".join(problems)


def locked(*, here_only: bool = False) -> dict[str, str]:
    """name -> pinned version; with `here_only`, only the lines whose marker holds on this interpreter."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pin, _, marker = line.partition(";")
            name, _, version = pin.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            if not here_only or not marker.strip() or Marker(marker.strip()).evaluate():
                pins[canonicalize_name(name.split("[")[0])] = version.strip()
    return pins


def test_the_lock_pins_every_declared_requirement_within_its_range():
    pins = locked()
    stale = []
    for text in PYPROJECT["dependencies"] + [r for reqs in PYPROJECT["optional-dependencies"].values() for r in reqs]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "warmpool" or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        if name not in pins:
            stale.append(f"{req.name} is not in requirements.lock")
        elif not req.specifier.contains(pins[name], prereleases=True):
            stale.append(f"{req.name}=={pins[name]} in requirements.lock is outside {text!r}")
    assert not stale, "run `make lock`:\n" + "\n".join(stale)


def test_the_venv_holds_the_locked_versions():
    """`make install` takes the lock as constraints, so what the suite runs on is what the lock says."""
    differ = []
    for name, version in locked(here_only=True).items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            differ.append(f"{name}: locked {version}, not installed")
            continue
        if installed != version:
            differ.append(f"{name}: locked {version}, installed {installed}")
    assert not differ, "run `make install`:\n" + "\n".join(differ)


# Imports every process of the plain install needs, with the extras' packages made unimportable.
PLAIN_INSTALL = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"flower", "tornado", "fakeredis", "kubernetes", "unikraft_cloud"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    sys.meta_path.insert(0, Block())
    import importlib.util
    importlib.util.find_spec = lambda name, *a: None if name.split(".")[0] in BLOCKED else _find(name, *a)
""")


def run_plain(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    prelude = PLAIN_INSTALL.replace("import importlib.util\n", "import importlib.util\n_find = importlib.util.find_spec\n")
    env = {"PATH": "/usr/bin:/bin", "WARMPOOL_DATABASE_URL": f"sqlite:///{tmp_path}/db.sqlite3",
           "WARMPOOL_DATA_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_plain_install_serves_the_api_and_runs_the_engine(tmp_path):
    done = run_plain("""
        from app.main import create_app
        app = create_app(dispatcher=False)
        import app.cli, workers.celery_app, workers.events, workers.observer, workers.operations
        import tasks.reconcile, tasks.provision, tasks.snapshots, tasks.leases, tasks.gc
        from workers.providers.registry import provider_class
        provider_class("fake"); provider_class("local")
        for name in ("flower", "tornado", "fakeredis", "kubernetes", "unikraft_cloud"):
            assert name not in sys.modules, name
        print("ok")
    """, tmp_path)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


def test_a_missing_extra_is_named(tmp_path):
    done = run_plain("""
        from workers.providers.base import ProviderPermanent
        from workers.providers.registry import provider_class
        for name in ("kubernetes", "unikraft"):
            try:
                provider_class(name)({})
            except ProviderPermanent as exc:
                print(exc)
        from app.extras import MissingExtra
        from app.devserver import EmbeddedRedis
        try:
            EmbeddedRedis(__import__("pathlib").Path("."), "fakeredis").start()
        except MissingExtra as exc:
            print(exc)
        from app.flower import run_flower
        try:
            run_flower(None)
        except MissingExtra as exc:
            print(exc)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    for line, extra in zip(lines, ("kubernetes", "unikraft", "dev", "flower")):
        assert f"pip install 'warmpool[{extra}]'" in line, line
