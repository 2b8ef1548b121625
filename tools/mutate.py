"""Mutation testing of the safety-critical modules: does the test suite notice one small change to the code?

Each mutant is one change to one module, made on its syntax tree:

- a comparison moved across its boundary or negated (``<`` to ``<=``, ``>=`` to ``>``, ``==`` to ``!=``,
  ``is`` to ``is not``, ``in`` to ``not in``);
- ``and`` swapped for ``or`` and the other way round;
- the condition of an ``if``, ``while`` or conditional expression negated;
- a number scaled by 1.2 (0 becomes 1, and a whole number that 1.2 does not change grows by one);
- a call made as a statement deleted (calls to the module's logger excepted: they change no behaviour);
- a ``return`` statement deleted.

Every mutant runs against the module's test files (``pytest -x``) in a copy of the source tree made in a
temporary directory, so the files being worked on are never changed. A mutant is *killed* when a test fails
(or the run exceeds its time limit), and *survives* when every test passes. A survivor is either a gap in
the tests or an *equivalent* mutant (one that changes no behaviour), which a person must judge.

Usage (from the project's root)::

    .venv/bin/python tools/mutate.py control/supervisor.py --sample 100 --seed 1
    .venv/bin/python tools/mutate.py control/protocols.py --list
    .venv/bin/python tools/mutate.py control/engine.py --only 12 --show

Exit status: 0 when every mutant run was killed, 1 when any survived, 2 on a usage error or when the
unchanged tree does not pass its own tests.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: The test files that judge each module, as globs from the project's root, the quickest first (the run
#: stops at the first failure, so most mutants never reach the slow ones).
TESTS: dict[str, tuple[str, ...]] = {
    "control/supervisor.py": (
        "tests/control/test_supervisor_limits.py",
        "tests/control/test_supervisor.py",
        "tests/control/test_supervisor*.py",
    ),
    "control/protocols.py": ("tests/control/test_protocols_limits.py", "tests/control/test_protocols*.py"),
    "control/engine.py": ("tests/control/test_engine*.py",),
}
#: What is left out of the copy of the tree.
IGNORED = (
    ".venv",
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "data",
)
#: The name of the logger object in the modules; calls on it are not deleted.
LOGGER_NAMES = frozenset({"_LOG", "logger", "log"})

_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_SYMBOL: dict[type[ast.cmpop], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}


@dataclass(frozen=True)
class Site:
    """One mutant: its number in the module, where it is, and what it changes."""

    number: int
    line: int
    kind: str
    change: str


def scaled(value: int | float) -> int | float:
    """A number scaled by 1.2; 0 becomes 1 and a whole number 1.2 leaves alone grows by one."""
    if value == 0:
        return 1 if isinstance(value, int) else 1.0
    if isinstance(value, int):
        bigger = round(value * 1.2)
        return bigger if bigger != value else value + 1
    return value * 1.2


def _is_logger_call(node: ast.expr) -> bool:
    call = node.value if isinstance(node, ast.Await) else node
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Attribute):
        return False
    owner = call.func.value
    return isinstance(owner, ast.Name) and owner.id in LOGGER_NAMES


class Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order, numbering every site; changes the one numbered ``target`` (none when
    ``target`` is None) and lists them all in :attr:`sites`."""

    def __init__(self, target: int | None) -> None:
        self.target = target
        self.sites: list[Site] = []
        self.applied = False

    def _site(self, node: ast.AST, kind: str, change: str) -> bool:
        number = len(self.sites)
        self.sites.append(Site(number, getattr(node, "lineno", 0), kind, change))
        hit = number == self.target
        self.applied = self.applied or hit
        return hit

    # Parts of the tree that hold no behaviour: annotations, docstrings, f-strings.
    def visit_arg(self, node: ast.arg) -> ast.arg:
        return node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.JoinedStr:
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AnnAssign:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def _body(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        body = node.body
        start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
        node.body = body[:start] + self._statements(body[start:])

    def _statements(self, statements: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in statements:
            result = self.visit(statement)
            out.extend(result if isinstance(result, list) else [result])
        return out or [ast.Pass()]

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        if node.args.defaults or node.args.kw_defaults:
            node.args.defaults = [self.visit(d) for d in node.args.defaults]
            node.args.kw_defaults = [None if d is None else self.visit(d) for d in node.args.kw_defaults]
        self._body(node)
        return node

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AsyncFunctionDef:
        node.args.defaults = [self.visit(d) for d in node.args.defaults]
        node.args.kw_defaults = [None if d is None else self.visit(d) for d in node.args.kw_defaults]
        self._body(node)
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        self._body(node)
        return node

    def visit_Module(self, node: ast.Module) -> ast.Module:
        body = node.body
        start = 1 if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else 0
        node.body = body[:start] + self._statements(body[start:])
        return node

    def visit_If(self, node: ast.If) -> ast.If:
        if self._site(node, "negate", f"if {ast.unparse(node.test)} -> if not (...)"):
            node.test = ast.UnaryOp(ast.Not(), node.test)
        else:
            node.test = self.visit(node.test)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse) if node.orelse else []
        return node

    def visit_While(self, node: ast.While) -> ast.While:
        if self._site(node, "negate", f"while {ast.unparse(node.test)} -> while not (...)"):
            node.test = ast.UnaryOp(ast.Not(), node.test)
        else:
            node.test = self.visit(node.test)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse) if node.orelse else []
        return node

    def visit_For(self, node: ast.For) -> ast.For:
        node.iter = self.visit(node.iter)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse) if node.orelse else []
        return node

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AsyncFor:
        node.iter = self.visit(node.iter)
        node.body = self._statements(node.body)
        return node

    def visit_With(self, node: ast.With) -> ast.With:
        node.items = [self.visit(i) for i in node.items]
        node.body = self._statements(node.body)
        return node

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AsyncWith:
        node.items = [self.visit(i) for i in node.items]
        node.body = self._statements(node.body)
        return node

    def visit_Try(self, node: ast.Try) -> ast.Try:
        node.body = self._statements(node.body)
        for handler in node.handlers:
            handler.body = self._statements(handler.body)
        node.orelse = self._statements(node.orelse) if node.orelse else []
        node.finalbody = self._statements(node.finalbody) if node.finalbody else []
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.IfExp:
        if self._site(node, "negate", f"{ast.unparse(node.test)} in a conditional expression -> not (...)"):
            node.test = ast.UnaryOp(ast.Not(), node.test)
        else:
            node.test = self.visit(node.test)
        node.body = self.visit(node.body)
        node.orelse = self.visit(node.orelse)
        return node

    def visit_Compare(self, node: ast.Compare) -> ast.Compare:
        node.left = self.visit(node.left)
        for i, op in enumerate(list(node.ops)):
            flipped = _FLIP.get(type(op))
            if flipped is not None and self._site(
                node, "compare", f"{ast.unparse(node)}: {_SYMBOL[type(op)]} -> {_SYMBOL[flipped]}"
            ):
                node.ops[i] = flipped()
        node.comparators = [self.visit(c) for c in node.comparators]
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.BoolOp:
        swapped: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        names = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        if self._site(node, "boolop", f"{ast.unparse(node)}: {names[0]} -> {names[1]}"):
            node.op = swapped
        node.values = [self.visit(v) for v in node.values]
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return node
        new = scaled(value)
        if self._site(node, "number", f"{value!r} -> {new!r}"):
            return ast.copy_location(ast.Constant(new), node)
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.stmt:
        value = node.value
        inner = value.value if isinstance(value, ast.Await) else value
        if isinstance(inner, ast.Call) and not _is_logger_call(value):
            if self._site(node, "delete call", f"{ast.unparse(node)} deleted"):
                return ast.copy_location(ast.Pass(), node)
        node.value = self.visit(value)
        return node

    def visit_Return(self, node: ast.Return) -> ast.stmt:
        if self._site(node, "delete return", f"{ast.unparse(node)} deleted"):
            return ast.copy_location(ast.Pass(), node)
        if node.value is not None:
            node.value = self.visit(node.value)
        return node


def sites_of(source: str) -> list[Site]:
    """Every mutant of a module's source."""
    mutator = Mutator(None)
    mutator.visit(ast.parse(source))
    return mutator.sites


def mutated(source: str, number: int) -> str:
    """The module's source with mutant ``number`` applied."""
    tree = ast.parse(source)
    mutator = Mutator(number)
    new = mutator.visit(copy.deepcopy(tree))
    if not mutator.applied:
        raise ValueError(f"no mutant {number}")
    return ast.unparse(ast.fix_missing_locations(new))


@dataclass
class Result:
    """What one mutant's run gave."""

    site: Site
    outcome: str  # killed, survived, timeout
    seconds: float
    failed: str = ""


class Sandbox:
    """A copy of the source tree in a temporary directory, where one module at a time is replaced."""

    def __init__(self, root: Path) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="mutate-")
        self.root = Path(self._dir.name) / "tree"
        shutil.copytree(root, self.root, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)

    def close(self) -> None:
        self._dir.cleanup()

    def write(self, module: str, source: str) -> None:
        (self.root / module).write_text(source, encoding="utf-8")

    def run(self, tests: Sequence[str], timeout_s: float) -> tuple[str, float, str]:
        """Run ``tests`` (stop at the first failure); returns (passed, failed or timeout), seconds, and the
        first failing test's id."""
        env = dict(os.environ, PYTHONPATH=str(self.root), PYTHONDONTWRITEBYTECODE="1")
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-x",
            "-q",
            "-n",
            "0",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            "--no-header",
            "-o",
            "addopts=",
            *tests,
        ]
        started = time.monotonic()
        # Its own process group, so that a time-out or an interruption ends the run and whatever it started.
        process = subprocess.Popen(
            command,
            cwd=self.root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return "timeout", time.monotonic() - started, ""
        except BaseException:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
        seconds = time.monotonic() - started
        if process.returncode == 0:
            return "passed", seconds, ""
        failed = next(
            (line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith(("FAILED ", "ERROR "))),
            stdout.strip().splitlines()[-1] if stdout.strip() else stderr.strip()[-200:],
        )
        return "failed", seconds, failed


def _test_files(module: str, given: Sequence[str]) -> list[str]:
    patterns = given or TESTS.get(module, ())
    files: list[str] = []
    for pattern in patterns:
        found = sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))
        if not found:
            raise SystemExit(f"mutate: no test file matches {pattern}")
        files.extend(f for f in found if f not in files)
    if not files:
        raise SystemExit(f"mutate: no test files known for {module}; name them with --tests")
    return files


def _choose(sites: list[Site], args: argparse.Namespace) -> list[Site]:
    chosen = sites
    if args.kind:
        chosen = [s for s in chosen if s.kind in args.kind]
    if args.lines:
        lo, _, hi = args.lines.partition("-")
        chosen = [s for s in chosen if int(lo) <= s.line <= int(hi or lo)]
    if args.only is not None:
        chosen = [s for s in chosen if s.number in args.only]
    if args.sample is not None and args.sample < len(chosen):
        chosen = sorted(random.Random(args.seed).sample(chosen, args.sample), key=lambda s: s.number)
    return chosen


def _run(
    module: str, chosen: list[Site], source: str, tests: list[str], args: argparse.Namespace
) -> list[Result]:
    box = Sandbox(ROOT)
    results: list[Result] = []
    try:
        status, baseline, failed = box.run(tests, args.timeout or 600)
        if status != "passed":
            print(f"mutate: the unchanged tree does not pass {' '.join(tests)}: {failed}", file=sys.stderr)
            raise SystemExit(2)
        limit = args.timeout or max(30.0, 3 * baseline)
        print(
            f"{module}: {len(chosen)} mutants, tests {' '.join(tests)} ({baseline:.1f} s unchanged, "
            f"limit {limit:.0f} s each)",
            flush=True,
        )
        deadline = time.monotonic() + args.budget if args.budget else None
        for site in chosen:
            if deadline is not None and time.monotonic() > deadline:
                print(f"mutate: time budget of {args.budget} s spent; {len(chosen) - len(results)} not run")
                break
            box.write(module, mutated(source, site.number))
            status, seconds, failed = box.run(tests, limit)
            outcome = {"failed": "killed", "passed": "survived", "timeout": "timeout"}[status]
            results.append(Result(site, outcome, seconds, failed))
            mark = "SURVIVED" if outcome == "survived" else outcome
            print(
                f"  #{site.number:<4} line {site.line:<5} {site.kind:<13} {mark:<8} {seconds:5.1f} s  "
                f"{site.change[:110]}",
                flush=True,
            )
        box.write(module, source)
    finally:
        box.close()
    return results


def _summary(module: str, results: list[Result]) -> str:
    killed = sum(r.outcome != "survived" for r in results)
    lines = [
        f"{module}: {killed} of {len(results)} mutants killed"
        + (f" ({100 * killed / len(results):.0f} %)" if results else "")
    ]
    for r in results:
        if r.outcome == "survived":
            lines.append(f"  survived #{r.site.number} line {r.site.line} ({r.site.kind}): {r.site.change}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="tools/mutate.py")
    parser.add_argument("modules", nargs="*", default=sorted(TESTS), help="modules, as paths from the root")
    parser.add_argument(
        "--tests", action="append", default=[], help="test files or globs (default: per module)"
    )
    parser.add_argument("--sample", type=int, help="run this many mutants per module, chosen at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sample (default 0)")
    parser.add_argument("--only", type=int, action="append", help="run only these mutant numbers")
    parser.add_argument(
        "--kind", action="append", help="only this kind (compare, boolop, negate, number, ...)"
    )
    parser.add_argument("--lines", help="only mutants on these lines, e.g. 400-460")
    parser.add_argument("--budget", type=float, help="stop starting new mutants after this many seconds")
    parser.add_argument("--timeout", type=float, help="limit for one run, s (default: 3x the unchanged run)")
    parser.add_argument("--list", action="store_true", help="list the mutants and run nothing")
    parser.add_argument("--show", action="store_true", help="print the mutated source of --only mutants")
    parser.add_argument("--report", type=Path, help="write every result as JSON to this file")
    args = parser.parse_args(argv)
    # A termination request unwinds like Ctrl-C: the running test is ended and the copy of the tree removed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if len(args.modules) > 1 and args.tests:
        parser.error("--tests needs exactly one module")
    all_results: list[Result] = []
    summaries: list[str] = []
    for module in args.modules:
        path = ROOT / module
        if not path.is_file():
            parser.error(f"no module {module}")
        source = path.read_text(encoding="utf-8")
        chosen = _choose(sites_of(source), args)
        if args.list or args.show:
            for site in chosen:
                print(f"#{site.number:<4} line {site.line:<5} {site.kind:<13} {site.change}")
                if args.show:
                    print(mutated(source, site.number))
            continue
        results = _run(module, chosen, source, _test_files(module, args.tests), args)
        all_results.extend(results)
        summaries.append(_summary(module, results))
    if args.list or args.show:
        return 0
    print("\n".join(summaries))
    if args.report is not None:
        args.report.write_text(json.dumps([asdict(r) for r in all_results], indent=1), encoding="utf-8")
    return 1 if any(r.outcome == "survived" for r in all_results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
