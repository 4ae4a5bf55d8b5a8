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


def test_docs_build_without_warnings(tmp_path):
    sphinx = pytest.importorskip("sphinx.cmd.build")
    out = tmp_path / "html"
    status = sphinx.build_main(
        ["-W", "-q", "-b", "html", str(DOCS), str(out), "-d", str(tmp_path / "doctrees")]
    )
    assert status == 0
    assert (out / "index.html").is_file()
    for page in REFERENCE_PAGES:
        assert (out / f"{page}.html").is_file()
    shutil.rmtree(tmp_path / "doctrees", ignore_errors=True)
