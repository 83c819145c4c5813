"""No unpickling of user files anywhere in the code (issue 15, security).

Scans the syntax trees of every module under selva_core/, selva_ray/ and jobs/ for calls that
can run code while reading a file: pickle / cloudpickle / dill / joblib / marshal loads,
`torch.load` without a literal `weights_only=True`, `numpy.load(allow_pickle=True)`,
`pandas.read_pickle`, `yaml.load` without a safe loader, `shelve.open`. The one exception is
the documented fallback in `selva_core/weights.py::load_state_dict`: a checkpoint whose bytes
matched a published MD5 (`trusted`) may be unpickled fully. Clip ids that would escape the
output root are covered end to end in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCANNED = ("selva_core", "selva_ray", "jobs")
# (file, function) -> number of full-unpickling calls allowed there, and why
ALLOWED = {
    ("selva_core/weights.py", "load_state_dict"): 1,  # MD5-verified official files only
}
UNSAFE_MODULE_CALLS = {
    "pickle": {"load", "loads", "Unpickler"},
    "_pickle": {"load", "loads", "Unpickler"},
    "cPickle": {"load", "loads", "Unpickler"},
    "cloudpickle": {"load", "loads"},
    "dill": {"load", "loads"},
    "joblib": {"load"},
    "marshal": {"load", "loads"},
    "shelve": {"open"},
    "pandas": {"read_pickle"},
    "yaml": {"unsafe_load", "full_load", "unsafe_load_all", "full_load_all"},
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


class _Scanner(ast.NodeVisitor):
    """Finds unsafe deserialisation calls, following `import x as y` / `from x import f`."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}  # local name -> module
        self.functions: dict[str, tuple[str, str]] = {}  # local name -> (module, attr)
        self.stack: list[str] = []
        self.found: list[tuple[int, str, str]] = []  # (line, function, what)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            root = alias.name.split(".")[0] if alias.asname is None else alias.name
            self.modules[alias.asname or root] = alias.name if alias.asname else root
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            module = node.module or ""
            self.functions[alias.asname or alias.name] = (module, alias.name)
            self.modules.setdefault(alias.asname or alias.name, f"{module}.{alias.name}")
        self.generic_visit(node)

    def _function(self, node) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def _target(self, func: ast.expr) -> tuple[str, str] | None:
        """(module, attribute) a call goes to, when it is a module function."""
        if isinstance(func, ast.Name) and func.id in self.functions:
            return self.functions[func.id]
        if isinstance(func, ast.Attribute):
            parts = []
            node = func.value
            while isinstance(node, ast.Attribute):
                parts.append(node.attr)
                node = node.value
            if isinstance(node, ast.Name) and node.id in self.modules:
                module = ".".join([self.modules[node.id], *reversed(parts)])
                return module, func.attr
        return None

    def visit_Call(self, node: ast.Call) -> None:
        target = self._target(node.func)
        if target is not None:
            module, attr = target
            root = module.split(".")[0]
            kwargs = {k.arg: k.value for k in node.keywords if k.arg}
            what = None
            if attr in UNSAFE_MODULE_CALLS.get(root, ()):
                what = f"{module}.{attr}"
            elif root == "torch" and attr == "load":
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    what = "torch.load without weights_only=True"
            elif root == "numpy" and attr == "load":
                flag = kwargs.get("allow_pickle")
                if not (flag is None or (isinstance(flag, ast.Constant) and flag.value is False)):
                    what = "numpy.load(allow_pickle=...)"
            elif root == "yaml" and attr in ("load", "load_all"):
                loader = kwargs.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
                name = getattr(loader, "attr", getattr(loader, "id", None))
                if name not in SAFE_YAML_LOADERS:
                    what = f"yaml.{attr} without a safe Loader"
            if what:
                self.found.append((node.lineno, ".".join(self.stack) or "<module>", what))
        self.generic_visit(node)


def scan_source(source: str) -> list[tuple[int, str, str]]:
    scanner = _Scanner()
    scanner.visit(ast.parse(source))
    return scanner.found


def test_the_scanner_finds_every_pattern():
    """The check must be able to fail: each unsafe spelling is reported."""
    source = """
import pickle, torch, yaml, numpy as np, joblib
import pickle as pk
from pickle import loads as lds
from torch import load
import dill
def f(p, data):
    pickle.load(open(p, "rb"))
    pk.loads(data)
    lds(data)
    pickle.Unpickler(open(p, "rb")).load()
    torch.load(p)
    torch.load(p, weights_only=False)
    torch.load(p, **kw)
    load(p, map_location="cpu")
    np.load(p, allow_pickle=True)
    yaml.load(open(p))
    yaml.unsafe_load(data)
    joblib.load(p)
    dill.loads(data)
def fine(p):
    torch.load(p, weights_only=True)
    np.load(p)
    yaml.load(open(p), Loader=yaml.SafeLoader)
    yaml.safe_load(open(p))
    obj.load(p)
"""
    found = scan_source(source)
    assert len(found) == 13, found
    assert all(fn == "f" for _, fn, _ in found), found


def test_no_unpickling_of_user_files_in_the_code():
    problems, allowed_seen = [], {}
    files = [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 50  # the scan really looked at the code
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        for line, function, what in scan_source(path.read_text(encoding="utf-8")):
            key = (rel, function)
            if key in ALLOWED and what.startswith("torch.load"):
                allowed_seen[key] = allowed_seen.get(key, 0) + 1
                continue
            problems.append(f"{rel}:{line} in {function}: {what}")
    assert not problems, "\n".join(problems)
    for key, count in allowed_seen.items():
        assert count <= ALLOWED[key], (key, count)


def test_the_verified_fallback_is_guarded_by_the_md5_check():
    """The one full unpickling call runs only for `trusted` files: after `if not trusted:
    raise`, inside the handler of a weights-only refusal."""
    source = (REPO / "selva_core/weights.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    fn = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "load_state_dict"
    )
    handlers = [h for n in ast.walk(fn) if isinstance(n, ast.Try) for h in n.handlers]
    guarded = False
    for handler in handlers:
        body = handler.body
        guard = next(
            (
                i
                for i, stmt in enumerate(body)
                if isinstance(stmt, ast.If)
                and ast.unparse(stmt.test) == "not trusted"
                and isinstance(stmt.body[-1], ast.Raise)
            ),
            None,
        )
        unsafe = [
            i
            for i, stmt in enumerate(body)
            if "weights_only=False" in ast.unparse(stmt).replace(" ", "")
        ]
        if unsafe:
            assert guard is not None and guard < min(unsafe), ast.unparse(handler)
            guarded = True
    assert guarded, "the MD5-verified fallback moved: update this test and ALLOWED"
