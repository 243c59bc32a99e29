"""The README and docs/: the README stays short, its figure is the one its command makes, every
`mrisr` command in them parses, every link lands, and the README's numbers are the measured
ones of the sections it cites."""
import re
import shlex
from pathlib import Path

import pytest

from mrisr.cli.main import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
#: the pages whose commands a user copies
COMMAND_PAGES = [README, DOCS / "usage.md", DOCS / "training.md", DOCS / "evaluation.md"]
README_LIMIT = 8 * 1024


def _code_commands(path: Path) -> list[str]:
    """The ``mrisr ...`` command lines of the bash blocks of a page (continuations joined)."""
    commands, in_bash = [], False
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_bash = line.strip() == "```bash" if not in_bash else False
        elif in_bash:
            text = line
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            if text.lstrip().startswith("mrisr "):
                commands.append(text.strip())
        i += 1
    return commands


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def test_readme_is_at_most_8_kb_and_keeps_the_two_commands():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}"
    text = README.read_text(encoding="utf-8")
    for script in ("./scripts/demo.sh", "./scripts/test.sh"):
        assert script in text
        assert (REPO / script).is_file()
    assert "## Dependencies" in text


def test_readme_figure_is_the_demo_figure_and_its_command_is_stated():
    text = README.read_text(encoding="utf-8")
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["docs/figures/demo_comparison.png"]
    assert (REPO / images[0]).is_file()
    # the command that makes it, and the file it writes
    assert "mrisr demo" in text and "comparison.png" in text


@pytest.mark.parametrize("page", COMMAND_PAGES, ids=lambda p: p.name)
def test_every_mrisr_command_in_the_docs_parses(page):
    commands = _code_commands(page)
    assert commands, f"{page.name} has no mrisr command"
    parser = build_parser()
    for command in commands:
        # shell variables (a SLURM script's) stand for numbers here
        argv = shlex.split(re.sub(r"\$\{?\w+\}?", "4", command), comments=True)[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{page.name}: '{command}' does not parse (exit {exc.code})")
        assert getattr(args, "func", None) is not None, command
        for token in argv:
            if token.startswith("configs/"):
                assert (REPO / token).is_file(), f"{page.name}: {token} does not exist"


def test_every_relative_link_of_readme_and_docs_lands():
    pages = [README, *sorted(DOCS.glob("*.md")), *sorted((DOCS / "benchmarks").glob("*.md"))]
    checked = 0
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.relative_to(REPO)}: link to missing {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in _anchors(dest), \
                    f"{page.relative_to(REPO)}: no heading '#{anchor}' in {dest.name}"
            checked += 1
    assert checked > 50


def test_benchmarks_summary_links_every_section_of_the_topic_pages():
    summary = (DOCS / "BENCHMARKS.md").read_text(encoding="utf-8")
    for page in sorted((DOCS / "benchmarks").glob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("## ") or line.startswith("### "):
                link = f"benchmarks/{page.name}#{_slug(line.lstrip('#'))}"
                assert link in summary, f"docs/BENCHMARKS.md does not link {link}"


def test_readme_expectations_are_the_numbers_of_the_cited_sections():
    text = README.read_text(encoding="utf-8")
    section = text.split("## What to expect", 1)[1].split("\n## ", 1)[0]
    sources = [README.parent / link.split("#")[0]
               for link in re.findall(r"\[source\]\(([^)]+)\)", section)
               if link.startswith("docs/")]
    assert sources, "the table cites no section"
    measured = "".join(p.read_text(encoding="utf-8") for p in set(sources))
    rows = [line for line in section.splitlines() if line.startswith("| ") and re.search(
        r"\d+\.\d\d", line)]
    assert len(rows) >= 4
    for row in rows:
        for number in re.findall(r"\d+\.\d\d", row):
            assert number in measured, f"README number {number} not in the cited sections"
