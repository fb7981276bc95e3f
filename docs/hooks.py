"""mkdocs hooks: the benchmark figures from bench/results/ without copies, and docstrings' Sphinx roles.

Pages link the figures as ``../bench/results/NAME.png`` (a path that also works when the page is
read on GitHub); this hook adds those files to the site under ``bench/results/`` and rewrites the
links to match, so ``mkdocs build --strict`` checks that every figure exists.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
LINK = re.compile(r"\]\(((?:\.\./)+)bench/results/")


def on_files(files, config):
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"bench/results/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")  # folders between docs/ and the page

    def relink(match: re.Match) -> str:
        ups = match.group(1).count("../")
        if ups != depth + 1:  # not a link to the repository's bench/results/
            return match.group(0)
        return "](" + "../" * depth + "bench/results/"

    return LINK.sub(relink, markdown)


# docstrings use Sphinx roles (:class:`~pkg.Name`); show them as plain code, the last part only
# when the name starts with ~, as Sphinx does
ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj|const):<code>(~?)([^<]*)</code>")


def on_page_content(html, page, config, files):
    def plain(match: re.Match) -> str:
        name = match.group(2)
        if match.group(1):
            name = name.rsplit(".", 1)[-1]
        return f"<code>{name}</code>"

    return ROLE.sub(plain, html)
