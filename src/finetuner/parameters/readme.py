"""The README's parameter tables, between their markers, made from the declared
parameters: `python -m finetuner.parameters.readme README.md` writes them."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from finetuner.parameters.generate import markdown_table
from finetuner.parameters.pipelines import PIPELINES


def marked(name: str) -> re.Pattern:
    return re.compile(
        rf"(<!-- parameters:{name} -->\n)(.*?)(<!-- /parameters:{name} -->)", re.DOTALL
    )


def with_tables(text: str) -> str:
    """The text with each pipeline's table between its markers."""
    for name, model in PIPELINES.items():
        table = markdown_table(model)
        text = marked(name).sub(lambda m, table=table: m[1] + table + m[3], text)
    return text


def main(path: str) -> None:
    readme = Path(path)
    readme.write_text(with_tables(readme.read_text()))


if __name__ == "__main__":
    main(sys.argv[1])
