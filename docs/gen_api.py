"""docs/gen_api.py: writes docs/api.md, the API reference, from the public names' docstrings.

    python docs/gen_api.py           # rewrite docs/api.md
    python docs/gen_api.py --check   # exit 1 (and say so) when docs/api.md is out of date

The public names are each public module's `__all__` (fastctc, fastctc.torch, fastctc.jax,
fastctc.paddle, fastctc.mindspore, fastctc.score).  Everything, names included, is read
from the source with `ast`: nothing is imported, so the page comes out the same on every
machine, with or without torch, jax, paddle, mindspore or the compiled extension.  A name
a module re-exports (`from ._engine import ctc_loss`, or fastctc's lazy `_LAZY` table) is
followed to the module that defines it.  Standard library only.

The docstrings are numpydoc: a summary line, an extended summary, then sections
(Parameters, Returns, Raises, Notes, Examples, ...) each underlined with dashes.  They are
rendered to Markdown here; tests/test_docs.py checks that docs/api.md matches this
output, that every documented function and class has the sections numpydoc asks for, and
runs the Examples as doctests.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import os
import re
import sys
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "pyx")
OUTPUT = os.path.join(ROOT, "docs", "api.md")

# (public module, what it is for in one line); the page follows this order
MODULES = [
    ("fastctc", "the NumPy API: PyTorch, MindSpore, optax and torchaudio semantics on NumPy arrays"),
    ("fastctc.torch", "PyTorch: autograd drop-ins and a registered torch op"),
    ("fastctc.jax", "JAX: optax.ctc_loss as an XLA custom call"),
    ("fastctc.paddle", "Paddle: paddle.nn.functional.ctc_loss and paddle.nn.CTCLoss"),
    ("fastctc.mindspore", "MindSpore: mindspore.ops.CTCLossV2 as a differentiable Cell"),
    ("fastctc.score", "the scoring tool behind `fastctc score` / `fastctc align`"),
]
# framework hooks the user never calls by name (torch's extra_repr, MindSpore's construct)
HOOKS = {"extra_repr", "construct"}
SECTIONS = ["Parameters", "Returns", "Yields", "Raises", "Warns", "Other Parameters", "Attributes",
            "See Also", "Notes", "References", "Examples"]
ENTRY_SECTIONS = {"Parameters", "Returns", "Yields", "Raises", "Warns", "Other Parameters", "Attributes"}
WIDTH = 92  # signature lines longer than this are wrapped


# --------------------------------------------------------------------------- source

def module_path(module: str) -> str:
    """The source file of a dotted module name under pyx/."""
    base = os.path.join(SOURCE, *module.split("."))
    return os.path.join(base, "__init__.py") if os.path.isdir(base) else base + ".py"


_TREES = {}


def parse(module: str):
    """(ast.Module, source lines) of a module, parsed once."""
    if module not in _TREES:
        with open(module_path(module), encoding="utf-8") as fh:
            text = fh.read()
        _TREES[module] = (ast.parse(text), text.splitlines())
    return _TREES[module]


def absolute(module: str, relative: str, level: int) -> str:
    """`from {'.' * level}{relative} import ...` inside `module`, as an absolute name."""
    package = module if os.path.basename(module_path(module)) == "__init__.py" else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{relative}" if relative else package


def literal_assignments(tree) -> dict:
    """Module-level NAME = <literal> assignments."""
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return names


def public_names(module: str) -> list:
    """The module's __all__, evaluated from the source (literals, and `*sorted(...)` of a
    literal table, as fastctc's __init__ writes it)."""
    tree, _ = parse(module)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            code = compile(ast.Expression(node.value), module_path(module), "eval")
            return list(eval(code, {"__builtins__": {"sorted": sorted, "list": list}}, literal_assignments(tree)))
    raise SystemExit(f"gen_api: {module} has no __all__")


def find_definition(module: str, name: str):
    """(defining module, ast node) of a public name, following re-exports."""
    tree, _ = parse(module)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return module, node
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return module, node
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level:
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    return find_definition(absolute(module, node.module or "", node.level), alias.name)
    lazy = literal_assignments(tree).get("_LAZY", {})
    if name in lazy:
        target = lazy[name]
        level = len(target) - len(target.lstrip("."))
        return find_definition(absolute(module, target.lstrip("."), level), name)
    raise SystemExit(f"gen_api: cannot find where {module}.{name} is defined")


# --------------------------------------------------------------------------- model

@dataclass
class Item:
    """One documented object: a function, a class, a method or a constant."""
    qualname: str           # as the user writes it: fastctc.ctc_loss, fastctc.CTCLossV2.loss_and_grad
    kind: str               # "function", "class", "exception", "method", "constant"
    module: str             # the module that defines it
    signature: str          # the call as a Python line ("" for constants)
    params: list            # parameter names the docstring must document, in order
    doc: str                # cleaned docstring ("" when there is none)
    bases: list = field(default_factory=list)
    members: list = field(default_factory=list)   # methods of a class
    lineno: int = 0


def _param_texts(args: ast.arguments, skip_first: bool):
    """Each parameter as source text (PEP 8 spacing), '*' and '/' markers included; and the names."""
    pos = list(args.posonlyargs) + list(args.args)
    defaults = [None] * (len(pos) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(pos, defaults))
    if skip_first and pairs:
        pairs = pairs[1:]

    def one(arg, default):
        text = arg.arg
        if arg.annotation is not None:
            text += ": " + ast.unparse(arg.annotation)
            if default is not None:
                text += " = " + ast.unparse(default)
        elif default is not None:
            text += "=" + ast.unparse(default)
        return text

    texts, names = [], []
    n_posonly = max(0, len(args.posonlyargs) - (1 if skip_first else 0))
    for i, (arg, default) in enumerate(pairs):
        texts.append(one(arg, default))
        names.append(arg.arg)
        if n_posonly and i == n_posonly - 1:
            texts.append("/")
    if args.vararg is not None:
        texts.append("*" + args.vararg.arg)
        names.append("*" + args.vararg.arg)
    elif args.kwonlyargs:
        texts.append("*")
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        texts.append(one(arg, default))
        names.append(arg.arg)
    if args.kwarg is not None:
        texts.append("**" + args.kwarg.arg)
        names.append("**" + args.kwarg.arg)
    return texts, names


def format_call(prefix: str, params: list, returns: str = "") -> str:
    """`prefix(a, b, ...)` on one line, or wrapped with 4-space indents past WIDTH."""
    tail = f" -> {returns}" if returns else ""
    line = f"{prefix}({', '.join(params)}){tail}"
    if len(line) <= WIDTH or not params:
        return line
    lines, current = [], ""
    for p in params:
        piece = p + ","
        if current and len(current) + 1 + len(piece) > WIDTH - 4:
            lines.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    lines.append(current.rstrip(","))
    return f"{prefix}(\n" + "\n".join("    " + ln for ln in lines) + f"\n){tail}"


def _is_dataclass(node: ast.ClassDef) -> bool:
    for d in node.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        if ast.unparse(target) in ("dataclass", "dataclasses.dataclass"):
            return True
    return False


def _function_item(qualname, module, node, method=False) -> Item:
    texts, names = _param_texts(node.args, skip_first=method)
    returns = ast.unparse(node.returns) if node.returns is not None else ""
    short = ".".join(qualname.split(".")[-2:]) if method else qualname.rpartition(".")[2]
    return Item(qualname, "method" if method else "function", module, format_call(short, texts, returns),
                names, inspect.cleandoc(ast.get_docstring(node, clean=False) or ""), lineno=node.lineno)


def _class_item(qualname, module, node: ast.ClassDef) -> Item:
    bases = [ast.unparse(b) for b in node.bases]
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    if init is not None:
        texts, names = _param_texts(init.args, skip_first=True)
    elif _is_dataclass(node):
        texts, names = [], []
        for n in node.body:
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                text = f"{n.target.id}: {ast.unparse(n.annotation)}"
                if n.value is not None:
                    text += " = " + ast.unparse(n.value)
                texts.append(text)
                names.append(n.target.id)
    else:
        texts, names = [], []
    exception = any(b.endswith(("Error", "Exception", "Warning")) for b in bases)
    short = qualname.rpartition(".")[2]
    if exception and init is None:
        signature = f"class {short}({', '.join(bases)})"
    else:
        signature = format_call(f"class {short}", texts)
    item = Item(qualname, "exception" if exception else "class", module, signature, names,
                inspect.cleandoc(ast.get_docstring(node, clean=False) or ""), bases=bases, lineno=node.lineno)
    for n in node.body:
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name not in HOOKS \
                and (not n.name.startswith("_") or n.name == "__call__"):
            item.members.append(_function_item(f"{qualname}.{n.name}", module, n, method=True))
    return item


def _constant_item(qualname, module, node) -> Item:
    _, lines = parse(module)
    value = node.value
    try:
        literal = ast.literal_eval(value)
    except ValueError:
        literal = None
    short = qualname.rpartition(".")[2]
    if isinstance(literal, (bool, int, float)) or literal is None:
        signature = f"{short} = {ast.unparse(value)}"
    else:
        signature = f"{short}: {type(literal).__name__}"
    # the description: the line's trailing comment, else the defining module's docstring
    line = lines[node.lineno - 1]
    comment = line.partition("#")[2].strip() if "#" in line else ""
    if comment:  # a terse source comment, written out as a sentence
        comment = comment[0].upper() + comment[1:] + ("" if comment.endswith(".") else ".")
    else:
        tree, _ = parse(module)
        comment = inspect.cleandoc(ast.get_docstring(tree, clean=False) or "")
    return Item(qualname, "constant", module, signature, [], comment, lineno=node.lineno)


def collect() -> list:
    """[(public module, its docstring, [Item])] for every public module."""
    out = []
    for public, _ in MODULES:
        tree, _ = parse(public)
        opening = inspect.cleandoc(ast.get_docstring(tree, clean=False) or "")
        items = []
        for name in public_names(public):
            module, node = find_definition(public, name)
            qualname = f"{public}.{name}"
            if isinstance(node, ast.ClassDef):
                items.append(_class_item(qualname, module, node))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                items.append(_function_item(qualname, module, node))
            else:
                items.append(_constant_item(qualname, module, node))
        # functions and classes first, then exceptions, then constants (each in __all__ order)
        order = {"function": 0, "class": 0, "exception": 1, "constant": 2}
        items.sort(key=lambda item: order[item.kind])
        out.append((public, opening, items))
    return out


def documented(groups=None) -> list:
    """Every function, class and method the page documents (constants excluded)."""
    result = []
    for _, _, items in groups if groups is not None else collect():
        for item in items:
            if item.kind != "constant":
                result.append(item)
                result.extend(item.members)
    return result


# --------------------------------------------------------------------------- numpydoc

def split_sections(doc: str):
    """(summary paragraphs, {section title: lines}) of a numpydoc docstring; raises
    ValueError for an unknown or repeated section title."""
    lines = doc.splitlines()
    head, sections, current = [], {}, None
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and underline and set(underline) == {"-"} and len(underline) >= 3 and not line.startswith(" "):
            title = line.strip()
            if title not in SECTIONS:
                raise ValueError(f"unknown section {title!r}")
            if title in sections:
                raise ValueError(f"section {title!r} appears twice")
            current = sections[title] = []
            i += 2
            continue
        (head if current is None else current).append(line)
        i += 1
    for title in sections:
        while sections[title] and not sections[title][-1].strip():
            sections[title].pop()
    while head and not head[-1].strip():
        head.pop()
    return head, sections


def entries(lines):
    """[(header, description lines)] of a Parameters-like section: a header at indent 0,
    its description indented below it."""
    out = []
    for line in lines:
        if not line.strip():
            if out:
                out[-1][1].append("")
        elif not line.startswith(" "):
            out.append((line.strip(), []))
        elif out:
            out[-1][1].append(line.strip())
        else:
            raise ValueError(f"an indented line before any entry: {line!r}")
    return [(h, _trim(d)) for h, d in out]


def _trim(lines):
    while lines and not lines[-1]:
        lines.pop()
    return lines


def entry_names(header: str) -> list:
    """The parameter names an entry header documents ('a, b : int' -> ['a', 'b'])."""
    names = header.partition(" : ")[0] if " : " in header else header
    return [n.strip() for n in names.split(",")]


# --------------------------------------------------------------------------- markdown

def anchor(qualname: str) -> str:
    """The page's own id of a name (an explicit <a id>, stable whatever the renderer)."""
    return qualname


def _inline(text: str) -> str:
    """Prose made safe for Markdown: outside `code` spans a dunder name (__version__)
    would turn bold, so its underscores are escaped."""
    parts = re.split(r"(`+[^`]*`+)", text)
    return "".join(p if p.startswith("`") else p.replace("__", r"\_\_") for p in parts)


def _paragraphs(lines) -> list:
    """Prose lines as Markdown: blank-line separated paragraphs, joined."""
    out, current = [], []
    for line in list(lines) + [""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(_inline(" ".join(current)))
            current = []
    return out


def _examples(lines) -> list:
    """Examples: doctest blocks fenced (```pycon), prose as paragraphs."""
    blocks, current = [], []
    for line in list(lines) + [""]:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    out = []
    for block in blocks:
        if block[0].lstrip().startswith(">>>"):
            indent = len(block[0]) - len(block[0].lstrip())
            out.append("```pycon\n" + "\n".join(ln[indent:] for ln in block) + "\n```")
        else:
            out.extend(_paragraphs(block))
    return out


def render_doc(doc: str) -> list:
    """A numpydoc docstring as Markdown blocks."""
    head, sections = split_sections(doc)
    blocks = _paragraphs(head)
    for title in SECTIONS:
        if title not in sections:
            continue
        blocks.append(f"**{title}**")
        body = sections[title]
        if title in ENTRY_SECTIONS:
            items = []
            for header, desc in entries(body):
                name, sep, kind = header.partition(" : ")
                if title in ("Parameters", "Other Parameters", "Attributes") or sep:
                    line = f"- **`{name}`**" + (f" : {_inline(kind)}" if sep else "")
                elif title in ("Raises", "Warns"):
                    line = "- " + ", ".join(f"`{n.strip()}`" for n in header.split(","))
                else:  # a Returns entry without a name: the type alone
                    line = f"- {_inline(header)}"
                text = " ".join(_paragraphs(desc))
                items.append(line + (f"\n\n  {text}" if text else ""))
            blocks.append("\n".join(items))
        elif title == "Examples":
            blocks.extend(_examples(body))
        else:
            blocks.extend(_paragraphs(body))
    return blocks


def render_item(item: Item, level: int) -> list:
    hashes = "#" * level
    label = {"function": "", "method": "", "class": "class ", "exception": "exception ", "constant": ""}[item.kind]
    blocks = [f'<a id="{anchor(item.qualname)}"></a>', f"{hashes} {label}`{item.qualname}`"]
    if item.signature:
        blocks.append(f"```python\n{item.signature}\n```")
    if item.kind == "constant":
        blocks.extend(_paragraphs(item.doc.splitlines()))
    else:
        if item.bases and not item.signature.startswith(f"class {item.qualname.rpartition('.')[2]}("
                                                        f"{', '.join(item.bases)})"):
            blocks.append("Bases: " + ", ".join(f"`{b}`" for b in item.bases))
        blocks.extend(render_doc(item.doc))
    source = os.path.relpath(module_path(item.module), ROOT).replace(os.sep, "/")
    blocks.append(f"*Defined in [`{source}`](../{source}).*")
    for member in item.members:
        blocks.extend(render_item(member, level + 1))
    return blocks


def render(groups=None) -> str:
    groups = groups if groups is not None else collect()
    blurbs = dict(MODULES)
    blocks = [
        "# API reference",
        "<!-- Generated by docs/gen_api.py from the docstrings; do not edit by hand. "
        "Regenerate with `python docs/gen_api.py`. -->",
        "Every public name of fastctc and its framework doors, with its signature and "
        "docstring. The guides say how the pieces fit together: [the NumPy API](numpy-api.md), "
        "[the framework doors](frontends.md), [alignment](alignment.md), [the CLI](cli.md).",
        "## Contents",
    ]
    toc = []
    for public, _, items in groups:
        toc.append(f"- [`{public}`](#{anchor(public)}): {blurbs[public]}")
        for item in items:
            toc.append(f"  - [`{item.qualname.rpartition('.')[2]}`](#{anchor(item.qualname)})")
    blocks.append("\n".join(toc))
    for public, opening, items in groups:
        blocks.append(f'<a id="{anchor(public)}"></a>')
        blocks.append(f"## `{public}`")
        # the docstring's opening says what the module is for; the rest (conventions,
        # semantics kept from the peer framework) is plain text, shown as written
        first, _, rest = opening.partition("\n\n")
        blocks.extend(_paragraphs(first.splitlines()))
        if rest.strip():
            blocks.append(f"<details><summary>The module's notes ({public} docstring)</summary>\n\n"
                          f"```text\n{rest.strip(chr(10)).rstrip()}\n```\n\n</details>")
        for item in items:
            blocks.extend(render_item(item, 3))
    return "\n\n".join(blocks) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when docs/api.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        try:
            with open(OUTPUT, encoding="utf-8") as fh:
                current = fh.read()
        except FileNotFoundError:
            current = None
        if current != text:
            print("docs/api.md is out of date: run python docs/gen_api.py", file=sys.stderr)
            return 1
        return 0
    with open(OUTPUT, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    print(f"wrote {os.path.relpath(OUTPUT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
