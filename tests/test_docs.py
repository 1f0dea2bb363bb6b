"""The documentation tells the truth about what can drift from the code: the README's two commands, the
configuration reference (generated from the spec), every relative link, and the stage list."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import spec_reference  # scripts/ (pytest.ini pythonpath)
from conftest import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_LIMIT_BYTES = 12 * 1024

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """Markdown without code blocks and inline code, where link syntax is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def code_blocks(text: str) -> str:
    return "\n".join(m.group(0) for m in FENCE.finditer(text))


def slugs(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to dashes, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", markdown).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links(path: Path) -> list[str]:
    text = prose(path.read_text())
    targets = INLINE_LINK.findall(text) + REFERENCE_LINK.findall(text)
    return [t for t in targets if not EXTERNAL.match(t)]


def test_readme_commands_are_makefile_targets():
    commands = set(re.findall(r"^\s*make ([a-z][\w-]*)", code_blocks(README.read_text()), re.M))
    assert {"demo", "test"} <= commands, f"the README's code blocks show make {sorted(commands)}"
    makefile = (ROOT / "Makefile").read_text()
    targets = {name for rule in re.findall(r"^([A-Za-z][\w -]*?)\s*:(?!=)", makefile, re.M) for name in rule.split()}
    assert commands <= targets, f"README runs make {sorted(commands - targets)}, which the Makefile lacks"
    assert re.search(r"^\s*(exec\s+)?make test\b", (ROOT / ".ci" / "run").read_text(), re.M), \
        "CI must run the README's test command"


def test_readme_fits_on_a_screen():
    size = len(README.read_bytes())
    assert size <= README_LIMIT_BYTES, f"README.md is {size} bytes; move detail into docs/"


def test_every_relative_link_points_to_a_file_in_the_repo():
    assert DOCS, "docs/*.md not found"
    broken = []
    for page in [README, *DOCS]:
        for target in relative_links(page):
            file_part, _, anchor = target.partition("#")
            resolved = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(ROOT)} -> {target}"
            if ROOT.resolve() not in (resolved, *resolved.parents):
                broken.append(f"{where} (outside the repository)")
            elif not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in slugs(resolved.read_text()):
                broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_finds_links_and_ignores_code():
    # The checker above is only as good as its link extraction: prose links count, code and URLs do not.
    text = ("See [a](a.md), [b](b.md#part) and ![c](img/c.png).\n[d]: d.md\n"
            "`[x](x.md)` and [web](https://example.com)\n```\n[y](y.md)\n```\n")
    found = [t for t in INLINE_LINK.findall(prose(text)) + REFERENCE_LINK.findall(prose(text))
             if not EXTERNAL.match(t)]
    assert sorted(found) == ["a.md", "b.md#part", "d.md", "img/c.png"], found
    assert slugs("# Top\n## `gates.min_accuracy` (floor)\n## Top\n") == {"top", "gatesmin_accuracy-floor", "top-1"}


def test_configuration_reference_is_current():
    committed = (ROOT / "docs" / "configuration.md").read_text()
    assert committed == spec_reference.page(), \
        "docs/configuration.md is stale: run .venv/bin/python scripts/spec_reference.py --write"


def test_configuration_reference_follows_a_changed_field_description(monkeypatch):
    gates = spec_reference.PipelineSpec.model_fields["gates"].annotation
    field = gates.model_fields["min_accuracy"]
    committed = (ROOT / "docs" / "configuration.md").read_text()
    monkeypatch.setattr(field, "description", "A floor described differently")
    changed = spec_reference.page()
    assert changed != committed
    assert "| `gates.min_accuracy` | float | `0.0` | A floor described differently (ge 0, le 1) |" in changed


def test_spec_reference_check_command():
    out = subprocess.run([sys.executable, "scripts/spec_reference.py", "--check"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "is current" in out.stdout


def test_every_stage_of_the_cli_is_documented():
    from tasks.__main__ import STAGES

    docs = "\n".join(page.read_text() for page in DOCS)
    missing = [stage for stage in STAGES if f"python -m tasks {stage}" not in docs]
    assert not missing, f"stages with no `python -m tasks STAGE` line in docs/: {missing}"
