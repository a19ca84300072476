"""The documentation a user reads: the README stays a landing page (at most 250 lines),
every relative link in README.md, CHANGELOG.md and docs/*.md resolves, and every code fence
is closed (an unclosed fence once rendered 30 lines of prose as code).

The API reference: docs/api.md is what docs/gen_api.py writes from the docstrings (run
`python docs/gen_api.py` after changing a public docstring), every public function, class
and method has a numpydoc docstring whose Parameters match its signature and, for
functions, a Returns section, and the docstrings' Examples run as doctests.  The Examples
of fastctc.paddle and fastctc.mindspore need those frameworks: .ci/run runs this file
again in their virtual environments, and elsewhere those two cases skip with the reason."""
import doctest
import glob
import importlib
import importlib.util
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_readme_is_a_landing_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve_and_fences_close(page):
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    fences = [line for line in text.splitlines() if line.lstrip().startswith("```")]
    assert len(fences) % 2 == 0, f"{page}: an unclosed code fence"
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if target.startswith(("http://", "https://", "mailto:", "#")) or "<" in target:
            continue
        path = os.path.normpath(os.path.join(os.path.dirname(page), target.split("#")[0]))
        assert os.path.exists(path), f"{os.path.relpath(page, ROOT)} links to a missing {target}"


# ------------------------------------------------------------------------ API reference

def _load_gen_api():
    spec = importlib.util.spec_from_file_location("gen_api", os.path.join(ROOT, "docs", "gen_api.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gen_api = _load_gen_api()
GROUPS = gen_api.collect()
DOCUMENTED = gen_api.documented(GROUPS)
# the framework each door needs to run its Examples
FRAMEWORK = {"fastctc.torch": "torch", "fastctc.jax": "jax", "fastctc.paddle": "paddle",
             "fastctc.mindspore": "mindspore"}


def test_api_reference_is_current():
    with open(gen_api.OUTPUT, encoding="utf-8") as fh:
        current = fh.read()
    assert current == gen_api.render(GROUPS), "docs/api.md is out of date: run python docs/gen_api.py"


def test_api_reference_covers_every_public_module():
    documented = {public for public, _, _ in GROUPS}
    assert documented == {"fastctc", "fastctc.torch", "fastctc.jax", "fastctc.paddle", "fastctc.mindspore",
                          "fastctc.score"}
    names = {item.qualname for _, _, items in GROUPS for item in items}
    for must in ("fastctc.ctc_loss", "fastctc.forced_align", "fastctc.CTCLossV2", "fastctc.torch.CTCLoss",
                 "fastctc.torch.gpu_status", "fastctc.jax.ctc_loss", "fastctc.paddle.ctc_loss",
                 "fastctc.mindspore.CTCLossV2", "fastctc.score.run_score", "fastctc.score.ScoreOptions"):
        assert must in names


def _numpydoc_problems(item) -> list:
    """What numpydoc would flag in the docstring of one documented function, class or method."""
    if not item.doc.strip():
        return ["no docstring"]
    problems = []
    lines = item.doc.splitlines()
    if not lines[0].strip() or not lines[0].rstrip().endswith("."):
        problems.append(f"the summary line should be one sentence ending with '.': {lines[0]!r}")
    if len(lines) > 1 and lines[1].strip():
        problems.append("the summary should fit on the first line (a blank line after it)")
    try:
        _, sections = gen_api.split_sections(item.doc)
        parsed = {title: gen_api.entries(body) for title, body in sections.items() if title in gen_api.ENTRY_SECTIONS}
    except ValueError as exc:
        return problems + [str(exc)]
    for title, body in sections.items():
        if not any(line.strip() for line in body):
            problems.append(f"section {title} is empty")
    if item.params:
        if "Parameters" not in parsed:
            problems.append(f"no Parameters section for {item.params}")
        else:
            names = [n for header, _ in parsed["Parameters"] for n in gen_api.entry_names(header)]
            if names != item.params:
                problems.append(f"Parameters document {names}, the signature has {item.params}")
            for header, desc in parsed["Parameters"]:
                if " : " not in header:
                    problems.append(f"parameter {header!r} has no type ('name : type')")
                if not desc:
                    problems.append(f"parameter {header!r} has no description")
    elif "Parameters" in parsed:
        problems.append("a Parameters section, but the signature takes no parameters")
    if item.kind in ("function", "method"):
        if "Returns" not in parsed and "Yields" not in parsed:
            problems.append("no Returns section")
        for header, desc in parsed.get("Returns", []):
            if not desc:
                problems.append(f"return value {header!r} has no description")
    elif "Returns" in parsed:
        problems.append("a class documents its constructor: no Returns section")
    for header, desc in parsed.get("Raises", []):
        if not all(n.isidentifier() for n in gen_api.entry_names(header)) or not desc:
            problems.append(f"Raises entry {header!r} should name exception classes and say when")
    return problems


@pytest.mark.parametrize("item", DOCUMENTED, ids=lambda item: item.qualname)
def test_public_docstrings_follow_numpydoc(item):
    problems = _numpydoc_problems(item)
    assert not problems, f"{item.qualname} ({item.module}): " + "; ".join(problems)


def test_numpydoc_check_can_fail():
    item = gen_api.Item("x.f", "function", "x", "f(a, b)", ["a", "b"],
                        "Does f\nParameters\n----------\na : int\n    A.\nNotes\n-----\nNone.")
    problems = " ".join(_numpydoc_problems(item))
    assert "ending with '.'" in problems and "signature has ['a', 'b']" in problems and "no Returns" in problems


EXAMPLE_MODULES = sorted({item.module for item in DOCUMENTED if ">>>" in item.doc})


@pytest.mark.parametrize("module_name", EXAMPLE_MODULES)
def test_docstring_examples(module_name):
    framework = FRAMEWORK.get(module_name)
    if framework is not None:
        pytest.importorskip(framework, reason=f"{framework} is not installed in this environment (.ci/run runs "
                                              f"each door's Examples where its framework is installed)")
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    report = []
    for test in doctest.DocTestFinder().find(module, module_name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0, f"no Examples found in {module_name}"
    assert results.failed == 0, "".join(report)
