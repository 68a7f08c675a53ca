"""Floors: who may import whom (docs/design.md, "Floors").

Every module under ``multimodal/`` is parsed with ``ast``; every import is read, the ones at
module level and the deferred ones inside functions alike (a deferred import hides a cycle; it
does not make a climbing import legal). A failure lists each offending ``file:line``.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "multimodal"
ROOT = PACKAGE.parent

# The top floor (docs/design.md): only these may import multimodal.cli.
TOP_FLOOR = ("multimodal.plugins", "multimodal.specs", "multimodal.testing",
             "multimodal.evaluation", "multimodal.replay", "multimodal.demo", "multimodal.cli",
             "multimodal.serve", "multimodal.plot", "multimodal.__init__", "multimodal.__main__")

# (importers, forbidden targets, the rule in words); a name covers its sub-modules.
RULES = [
    (("multimodal.pipelines", "multimodal.modalities"),
     ("multimodal.training", "multimodal.testing"),
     "pipelines/ and modalities/ import neither training/ nor testing.py"),
    (("multimodal.modalities",),
     ("multimodal.pipelines", "multimodal.specs"),
     "modalities/ imports neither pipelines/ nor specs/"),
    (("multimodal.training",),
     ("multimodal.pipelines", "multimodal.cli", "multimodal.specs"),
     "training/ imports neither pipelines/ nor the CLI nor specs/"),
    (("multimodal.config",),
     ("multimodal.training",),
     "config.py imports no training/"),
    (("multimodal.errors", "multimodal.registry", "multimodal.io", "multimodal.safety",
      "multimodal.nn", "multimodal.config", "multimodal.train_config", "multimodal.backbone",
      "multimodal.model", "multimodal.builders", "multimodal.checkpoint", "multimodal.data"),
     ("multimodal.modalities", "multimodal.outputs", "multimodal.interop",
      "multimodal.pipelines", "multimodal.training") + TOP_FLOOR,
     "the ground and config floors (errors, registry, io, safety, nn, config, backbone, "
     "builders, checkpoint, data) import nothing above them"),
    (("multimodal.outputs",),
     ("multimodal.pipelines", "multimodal.training") + TOP_FLOOR,
     "outputs.py, beside the modalities, imports neither pipelines/ nor training/ nor the "
     "top floor"),
    (("multimodal.interop",),
     ("multimodal.pipelines", "multimodal.training") + TOP_FLOOR,
     "interop/ (Hugging Face export), beside the modalities, imports neither pipelines/ nor "
     "training/ nor the top floor"),
    (("multimodal.modalities",),
     ("multimodal.interop",),
     "modalities/ import no interop/ (the export reads them, not the other way)"),
    (("multimodal.pipelines", "multimodal.modalities", "multimodal.training"),
     ("multimodal.serve",),
     "pipelines/, modalities/ and training/ import no serve/ (the server calls the pipelines)"),
    (("multimodal.serve",),
     ("multimodal.cli", "multimodal.training", "multimodal.testing", "multimodal.evaluation",
      "multimodal.demo", "multimodal.replay"),
     "serve/, on the top floor beside the CLI, imports neither the CLI (which starts it) nor "
     "training/, testing.py, evaluation/, demo.py or replay.py"),
]


@dataclass(frozen=True)
class Import:
    path: Path  # the importing file
    module: str  # its dotted name, e.g. "multimodal.pipelines.text_to_image"
    target: str  # the imported dotted name, e.g. "multimodal.training.trainer"
    line: int
    end_line: int
    deferred: bool  # inside a function

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1 and path.parent != PACKAGE:
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(path: Path) -> list[str]:
    return list(path.relative_to(ROOT).parent.parts)


def _imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = _module_name(path)
    found: list[Import] = []

    def visit(node: ast.AST, deferred: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this file's package
                    package = _package_of(path)[: len(_package_of(path)) - child.level + 1]
                    base = ".".join(package + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                # "from multimodal import training" imports multimodal.training
                targets = [f"{base}.{alias.name}" for alias in child.names] + [base]
            for target in targets:
                if target == "multimodal" or target.startswith("multimodal."):
                    found.append(Import(path, module, target, child.lineno,
                                        getattr(child, "end_lineno", child.lineno), deferred))
            visit(child, inner)

    visit(tree, False)
    return found


def _all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in _imports(path)]


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _report(offences: list[tuple[Import, str]]) -> str:
    lines = [f"  {imp.where()}: imports {imp.target}"
             f"{' (deferred)' if imp.deferred else ''} -- {rule}"
             for imp, rule in sorted(set(offences), key=lambda o: (str(o[0].path), o[0].line))]
    return f"{len(lines)} import(s) climb a floor:\n" + "\n".join(lines)


def test_the_parser_sees_module_level_and_deferred_imports():
    imports = _all_imports()
    assert len({imp.path for imp in imports}) > 40
    assert any(imp.deferred for imp in imports) and any(not imp.deferred for imp in imports)


def test_no_import_climbs_a_floor():
    offences: list[tuple[Import, str]] = []
    for imp in _all_imports():
        for importers, forbidden, rule in RULES:
            if _within(imp.module, importers) and _within(imp.target, forbidden):
                offences.append((imp, rule))
        if _within(imp.target, ("multimodal.cli",)) and not _within(imp.module, TOP_FLOOR):
            offences.append((imp, "only the top floor imports cli.py"))
    assert not offences, _report(offences)


def _comment_lines(path: Path) -> set[int]:
    lines = set()
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type == tokenize.COMMENT:
                lines.add(tok.start[0])
    return lines


def test_every_deferred_import_says_why():
    """A deferred ``multimodal.*`` import carries its reason in a comment on its line(s), or on
    the line before the block of deferred imports it belongs to (docs/design.md: a heavy
    optional dependency, the registry's lazy loading, a cycle that must stay)."""
    imports = [imp for imp in _all_imports() if imp.deferred]
    import_lines: dict[Path, set[int]] = {}
    for imp in imports:
        import_lines.setdefault(imp.path, set()).update(range(imp.line, imp.end_line + 1))
    missing: list[tuple[str, int, str]] = []
    comments: dict[Path, set[int]] = {}
    seen: set[tuple[Path, int]] = set()
    for imp in imports:
        if (imp.path, imp.line) in seen:
            continue
        seen.add((imp.path, imp.line))
        if imp.path not in comments:
            comments[imp.path] = _comment_lines(imp.path)
        first = imp.line
        while first - 1 in import_lines[imp.path]:  # the top of its block of imports
            first -= 1
        if not comments[imp.path] & set(range(first - 1, imp.end_line + 1)):
            missing.append((str(imp.path), imp.line,
                            f"  {imp.where()}: imports {imp.target} inside a function, "
                            "with no comment saying why"))
    assert not missing, (f"{len(missing)} deferred import(s) without a reason:\n"
                         + "\n".join(text for _, _, text in sorted(missing)))


def test_the_rules_catch_a_climbing_import(tmp_path, monkeypatch):
    """The checker itself: a modality that imports the trainer inside a function is caught."""
    fake = PACKAGE / "modalities" / "text" / "head.py"
    source = "def f():\n    from multimodal.training import trainer\n"
    monkeypatch.setattr(Path, "read_text", lambda self, encoding=None: source)
    imports = _imports(fake)
    assert [(i.target, i.line, i.deferred) for i in imports][0] == \
        ("multimodal.training.trainer", 2, True)
    assert _within(imports[0].module, RULES[0][0]) and _within(imports[0].target, RULES[0][1])


def test_the_rules_keep_the_server_on_the_top_floor():
    """A pipeline that imports the server, and a server module that imports the CLI, are both
    caught; the CLI starting the server is not."""
    def offences(module: str, target: str) -> list[str]:
        found = [rule for importers, forbidden, rule in RULES
                 if _within(module, importers) and _within(target, forbidden)]
        if _within(target, ("multimodal.cli",)) and not _within(module, TOP_FLOOR):
            found.append("only the top floor imports cli.py")
        return found

    assert offences("multimodal.pipelines.text_to_image", "multimodal.serve.engine")
    assert offences("multimodal.serve.app", "multimodal.cli")
    assert offences("multimodal.checkpoint", "multimodal.serve")
    assert not offences("multimodal.cli", "multimodal.serve")
    assert not offences("multimodal.serve.engine", "multimodal.pipelines.batching")
