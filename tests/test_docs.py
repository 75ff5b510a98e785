"""The user documentation: README.md stays short, docs/ has a page for each question a user has, and
every relative link and repository path they name leads to something that exists."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = ("getting_started.md", "losses.md", "benchmarks.md", "faq.md", "extending.md")
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 150

# A repository path in inline code starts with one of these folders; generated folders (output/,
# pretrained/, datasets' contents) are left out, as are placeholders such as <name>.
REPO_FOLDERS = ("configs", "datasets", "docs", "kddet", "results", "scripts", "tests", "tools")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def ids(path):
    return [str(p.relative_to(REPO)) for p in path]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


def anchors(text: str) -> set:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated one numbered."""
    seen, result = {}, set()
    for heading in HEADING.findall(prose(text)):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(document: Path):
    for target in LINK.findall(prose(document.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        yield target


def repo_paths(document: Path):
    """Paths of the repository named in inline code, e.g. `configs/voc/combined.yaml`: the tokens
    that start with a repository folder and hold no placeholder."""
    for span in INLINE_CODE.findall(prose(document.read_text(encoding="utf-8"))):
        for token in span.split():
            token = token.strip("\"'(),;:")
            if token.split("/")[0] in REPO_FOLDERS and "/" in token and not re.search(r"[<>*{}$\[\]|]", token):
                yield token


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"


def test_readme_states_how_long_the_suite_takes():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"The test suite \(`make test`\) takes about \d+ minutes", readme)
    assert stated, "fill in the measured make test time"


def test_docs_has_a_page_per_question():
    missing = [page for page in PAGES if not (REPO / "docs" / page).is_file()]
    assert not missing, f"docs/ lacks {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids(DOCUMENTS))
def test_no_reference_to_files_outside_the_repository(document):
    text = document.read_text(encoding="utf-8")
    assert "shared/" not in text, f"{document.name} refers to shared/, which users do not have"


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids(DOCUMENTS))
def test_relative_links_resolve(document):
    broken = []
    for target in relative_links(document):
        path, _, fragment = target.partition("#")
        destination = (document.parent / path).resolve() if path else document
        if not destination.exists():
            broken.append(target)
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination.read_text("utf-8")):
            broken.append(target)
    assert not broken, f"{document.name}: links to nothing: {broken}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=ids(DOCUMENTS))
def test_repository_paths_exist(document):
    missing = sorted({p for p in repo_paths(document) if not (REPO / p.rstrip("/")).exists()})
    assert not missing, f"{document.name} names paths the repository lacks: {missing}"


def test_the_checks_find_broken_links(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n[ok](page.md#a-page) [gone](nothing.md) [bad anchor](#nowhere) [web](https://x.org)\n"
        "`python tools/no_such_tool.py --x` `results/<study>.md` `tools/train_net.py`\n"
        "```\nconfigs/in_a_fence.yaml\n```\n",
        encoding="utf-8",
    )
    assert list(relative_links(page)) == ["page.md#a-page", "nothing.md", "#nowhere"]
    assert anchors(page.read_text()) == {"a-page"}
    assert list(repo_paths(page)) == ["tools/no_such_tool.py", "tools/train_net.py"]


def markdown_tables(text: str):
    """Each table of a page as (header cells, rows of cells)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip("|").split("|")])
            yield header, rows


# The tables README.md and docs/benchmarks.md copy from the results tables, by their headers.
QUOTED_TABLES = {
    ("README.md", "results/embedded.md"): [
        "| model | seeds | AP | ΔAP vs student | gap recovered | verdict | after Holm |"
    ],
    ("docs/benchmarks.md", "results/embedded.md"): [
        "| model | seeds | AP | AP50 | AP75 | ΔAP vs student | smallest detectable ΔAP | gap recovered | verdict | "
        "after Holm |",
        "| model | disk | ring | box | bar | triangle | cross |",
    ],
    ("docs/benchmarks.md", "results/embedded_scratch.md"): [
        "| model | seeds | AP | ΔAP vs student | smallest detectable ΔAP | verdict | after Holm |"
    ],
}


@pytest.mark.parametrize("document, source", sorted(QUOTED_TABLES))
def test_the_docs_quote_the_results_tables_as_generated(document, source):
    """Each copied row has the values of the same model's row in the results table, column by column."""
    generated_tables = list(markdown_tables((REPO / source).read_text(encoding="utf-8")))
    text = (REPO / document).read_text(encoding="utf-8")
    for header_line in QUOTED_TABLES[document, source]:
        header = [c.strip() for c in header_line.strip("|").split("|")]
        copies = [rows for head, rows in markdown_tables(text) if head == header]
        assert len(copies) == 1, f"{document} has no single table headed {header_line}"
        ((source_header, generated),) = [(head, rows) for head, rows in generated_tables if set(header) <= set(head)]
        by_model = {row[0]: dict(zip(source_header, row)) for row in generated}
        assert copies[0], document
        for row in copies[0]:
            assert row[0] in by_model, f"{document}: {row[0]} is not a row of {source}"
            assert dict(zip(header, row)) == {c: by_model[row[0]][c] for c in header}, (document, row[0])
