"""The evaluation gallery rendered by headless Chromium: every embedded thumbnail is painted."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from captioner.evaluation.gallery import write_gallery
from tests.helpers.gallery import COLOURS, make_gallery_inputs
from tests.helpers.project import require

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--hide-scrollbars"]



def screenshot(html: Path, png: Path, profile: Path, size: str = "1200,900") -> None:
    """Render `html` with headless Chromium (the documented gallery check) into `png`."""
    subprocess.run(
        ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
         f"--screenshot={png}", html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    )



def test_gallery_renders_in_headless_chromium(tmp_path: Path) -> None:
    require(shutil.which("chromium") is not None,
            "chromium (Debian: apt-get install -y chromium) for the gallery's headless render check")
    table, paths, root = make_gallery_inputs(tmp_path)
    write_gallery(root / "gallery.html", table, paths, 3, "captioner gallery", {"BLEU4": "0.500"}, root=root)
    png = root / "gallery.png"
    screenshot(root / "gallery.html", png, root / "chromium-profile")
    shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert shot.shape[:2] == (900, 1200)
    for name, colour in COLOURS.items():  # each embedded thumbnail was decoded and painted
        near = (np.abs(shot - np.array(colour)).sum(axis=2) < 40).sum()
        assert near > 5000, f"the {name} thumbnail is not visible in the screenshot"

