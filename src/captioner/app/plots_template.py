"""An HTML template for `dvc plots show/diff` that works offline: Vega, Vega-Lite and vega-embed
inlined from their npm packages instead of DVC's CDN `<script src=...>` tags.

`make plots-template` runs `npm pack` for the pinned versions and then
`python -m captioner.app.plots_template DIR...` on the unpacked packages; `.dvc/config` points
`plots.html_template` at the result (`vendor/dvc-plots.html`, committed).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

__all__ = ["BUNDLES", "PAGE", "build_template", "main", "read_bundle"]

BUNDLES = (("vega", "build/vega.min.js"), ("vega-lite", "build/vega-lite.min.js"),
           ("vega-embed", "build/vega-embed.min.js"))

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>captioner: DVC plots</title>
    <!-- {versions}: inlined by `make plots-template`, so the page renders offline -->
    {inline}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def read_bundle(package_dir: Path, name: str, build_file: str) -> tuple[str, str]:
    """(name@version, the minified script) of one unpacked npm package, which must be `name`."""
    meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    if meta.get("name") != name:
        raise ValueError(f"{package_dir}: package {meta.get('name')}, expected {name}")
    script = (package_dir / build_file).read_text(encoding="utf-8")
    if "</script" in script.lower():
        raise ValueError(f"{package_dir / build_file}: contains '</script', cannot be inlined")
    return f"{meta['name']}@{meta['version']}", script


def build_template(package_dirs: Sequence[Path]) -> str:
    """The template from the unpacked vega, vega-lite and vega-embed packages (in that order).

    DVC fills `{plot_divs}` and `{refresh_tag}`; the template has no `{scripts}` placeholder, so
    DVC's CDN script tags are never added."""
    if len(package_dirs) != len(BUNDLES):
        raise ValueError(f"expected {len(BUNDLES)} package folders (vega, vega-lite, vega-embed)")
    versions, scripts = [], []
    for (name, build_file), folder in zip(BUNDLES, package_dirs):
        version, script = read_bundle(Path(folder), name, build_file)
        versions.append(version)
        scripts.append(f"<script>{script}</script>")
    page = PAGE.replace("{{", "\0").replace("}}", "\1")  # literal braces of the CSS
    page = page.replace("{versions}", ", ".join(versions)).replace("{inline}", "\n    ".join(scripts))
    return page.replace("\0", "{").replace("\1", "}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m captioner.app.plots_template", description=__doc__)
    ap.add_argument("packages", nargs=3, type=Path, help="unpacked vega, vega-lite, vega-embed")
    ap.add_argument("-o", "--out", type=Path, default=Path("vendor/dvc-plots.html"))
    args = ap.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(build_template(args.packages), encoding="utf-8")
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB, renders offline")


if __name__ == "__main__":
    main()
