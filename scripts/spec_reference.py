"""Print the configuration reference (a markdown table per spec section) from the pydantic schema.

README.md embeds this output between the `spec-reference` markers; tests/test_readme.py checks they agree, so
the reference cannot drift from the code. Regenerate with: .venv/bin/python scripts/spec_reference.py --write
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402
from pydantic_core import PydanticUndefined  # noqa: E402

from tasks.spec import PipelineSpec  # noqa: E402

BEGIN, END = "<!-- spec-reference:begin -->", "<!-- spec-reference:end -->"


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if not getattr(annotation, "__args__", None) else None
    text = text or str(annotation).replace("typing.", "")
    for prefix in ("tasks.spec.",):
        text = text.replace(prefix, "")
    return text.replace("NoneType", "None").replace("|", "\\|")


def _default(field) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "**required**"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(exclude_none=True) for v in value]
    return f"`{value!r}`".replace("|", "\\|")


def _rows(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((f"{prefix}{name}", annotation))
            continue
        bounds = [f"{m.__class__.__name__.lower()} {getattr(m, m.__class__.__name__.lower(), '')}"
                  for m in field.metadata if m.__class__.__name__ in ("Ge", "Gt", "Le", "Lt")]
        description = (field.description or "").replace("|", "\\|")
        if bounds:
            description = (description + " " if description else "") + f"({', '.join(bounds)})"
        out.append(f"| `{prefix}{name}` | {_type_name(annotation)} | {_default(field)} | {description} |")
    for name, sub in nested:
        _rows(sub, f"{name}.", out)


def reference() -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    _rows(PipelineSpec, "", lines)
    return "\n".join(lines)


def main() -> int:
    table = reference()
    if "--write" in sys.argv:
        readme = ROOT / "README.md"
        text = readme.read_text()
        head, rest = text.split(BEGIN, 1)
        _old, tail = rest.split(END, 1)
        readme.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
