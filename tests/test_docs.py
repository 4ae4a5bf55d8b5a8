import importlib
import inspect
import shutil
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
REFERENCE_SECTIONS = (
    "What it is",
    "When to use it",
    "Minimal example",
    "Parameters",
    "Input expectations",
    "Returns",
    "Failure modes",
    "Notes",
)
REFERENCE_PAGES = [
    "data-preparation",
    "trainer",
    "models",
    "count-models",
    "reference-mapping",
    "tasks",
    "adapters",
    "tl",
    "pp",
    "pl",
    "cli",
    "runner",
    "evaluation",
    "integration-metrics",
    "compare",
    "foundation",
    "annotation-quickstart",
    "performance",
    "distributed",
    "resume",
]


@pytest.mark.parametrize("page", REFERENCE_PAGES)
def test_reference_pages_have_every_section(page):
    text = (DOCS / f"{page}.md").read_text()
    headings = [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
    for section in REFERENCE_SECTIONS:
        assert any(heading.startswith(section) for heading in headings), (
            f"{page}.md lacks '## {section}'"
        )


@pytest.fixture(scope="module")
def built_docs(tmp_path_factory):
    """The site, built once with warnings as errors (about 30 s).

    The tutorials are rendered without executing them (``nb_execution_mode=off``): the test
    suite already executes every tutorial in ``tests/test_tutorials.py`` (about 3 minutes),
    and a plain ``sphinx-build`` executes them into its cache (``docs/_build/.jupyter_cache``).
    """
    sphinx = pytest.importorskip("sphinx.cmd.build")
    pytest.importorskip("myst_nb")
    pytest.importorskip("sphinx_book_theme")
    tmp = tmp_path_factory.mktemp("docs")
    out = tmp / "html"
    status = sphinx.build_main(
        ["-W", "-q", "-b", "html", str(DOCS), str(out), "-d", str(tmp / "doctrees")]
        + ["-D", "nb_execution_mode=off"]
    )
    assert status == 0
    shutil.rmtree(tmp / "doctrees", ignore_errors=True)
    return out


def test_docs_build_without_warnings(built_docs):
    assert (built_docs / "index.html").is_file()
    for page in REFERENCE_PAGES + ["getting-started", "coming-from-scdlkit", "changelog"]:
        assert (built_docs / f"{page}.html").is_file()
    for tutorial in (DOCS.parent / "tutorials").glob("*.md"):
        assert (built_docs / "tutorials" / f"{tutorial.stem}.html").is_file()


API_MODULES = [
    "scdlkit",
    "scdlkit.tl",
    "scdlkit.pp",
    "scdlkit.pl",
    "scdlkit.models",
    "scdlkit.tasks",
    "scdlkit.evaluation",
    "scdlkit.pipeline",
]


@pytest.mark.parametrize("module", API_MODULES)
def test_api_reference_lists_every_public_name(built_docs, module):
    mod = importlib.import_module(module)
    page = built_docs / "api" / "generated" / f"{module}.html"
    html = page.read_text()
    # module constants (UPPER_CASE, e.g. DEFAULT_OUTPUTS) are not listed by autosummary
    missing = [name for name in mod.__all__ if name not in html and not name.isupper()]
    assert not missing, f"{page.name} lacks {missing}"
    for name in mod.__all__:
        if inspect.isfunction(getattr(mod, name)) or inspect.isclass(getattr(mod, name)):
            # every function and class has its own page with its signature and docstring
            assert (page.parent / f"{module}.{name}.html").is_file(), name
