"""Where each emoji vendor's art lives in node_modules and how to draw one subject (the vendors
themselves, with their licences, are :data:`lora_core.world.VENDORS`).

Subjects are matched across vendors by codepoint key: lowercase hex, each codepoint at least
four digits, '-'-joined, variation selector ``fe0f`` dropped (vendors disagree on it).

>>> normalize_key("0023-FE0F-20E3"), normalize_key("37-fe0f-20e3"), normalize_key("1F600")
('0023-20e3', '0037-20e3', '1f600')
"""
from __future__ import annotations

import io
import json
from functools import cached_property
from pathlib import Path

from PIL import Image

from lora_core.images import prepare_image
from lora_core.world import VENDORS


def normalize_key(codepoints: str) -> str:
    """Vendor-independent subject key for a codepoint sequence such as ``'1F44D-1F3FB'``."""
    parts = [f"{int(p, 16):04x}" for p in codepoints.replace("_", "-").split("-") if p]
    return "-".join(p for p in parts if p != "fe0f")


CATALOG_PACKAGE = "emoji-datasource"  # names, categories, short names (MIT, iamcal/emoji-data)


def package_version(node_modules: Path, package: str) -> str:
    return json.loads((node_modules / package / "package.json").read_text())["version"]


class VendorFiles:
    """Index of one vendor's drawable subjects: ``key -> source`` and ``render(key, size)``."""

    def __init__(self, vendor: str, node_modules: Path):
        if vendor not in VENDORS:
            raise ValueError(f"unknown vendor {vendor!r}. Valid vendors: {', '.join(VENDORS)}")
        self.vendor = VENDORS[vendor]
        self.root = Path(node_modules) / self.vendor.package
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: npm package missing; run `npm ci` (see Makefile)")

    @cached_property
    def sources(self) -> dict[str, object]:
        name = self.vendor.name
        if name in ("noto", "twemoji"):
            folder = self.root / "img" / ("google" if name == "noto" else "twitter") / "64"
            return {normalize_key(p.stem): p for p in sorted(folder.glob("*.png"))}
        if name == "fluent3d":
            # Keep only codepoints in Microsoft's own catalogue: this package adds flags of
            # unknown origin that are not part of Fluent Emoji.
            microsoft = _microsoft_catalogue(self.root.parent.parent / "@iconify-json" / "fluent-emoji-flat")
            return {k: p for p in sorted((self.root / "assets").glob("*.webp"))
                    if (k := normalize_key(p.stem)) in microsoft}
        if name in ("openmoji", "openmoji_black"):
            folder = self.root / ("color" if name == "openmoji" else "black") / "svg"
            return {normalize_key(p.stem): p for p in sorted(folder.glob("*.svg"))
                    if all(c in "0123456789ABCDEFabcdef-" for c in p.stem)}
        return _iconify_svgs(self.root)

    def render(self, key: str, size: int, background: tuple[int, int, int]) -> Image.Image:
        """The subject drawn at ``size`` px: transparency composited onto ``background``, Lanczos."""
        source = self.sources[key]
        if isinstance(source, Path) and source.suffix in (".png", ".webp"):
            with Image.open(source) as image:
                image.load()
                return prepare_image(image, size, background)
        svg = source.read_text() if isinstance(source, Path) else source
        # Render at 2x, then composite and downsample with the same rule as raster sources.
        png = _rasterise(svg, 2 * size)
        return prepare_image(Image.open(io.BytesIO(png)), size, background)


def _rasterise(svg: str, size: int) -> bytes:
    import resvg_py

    return bytes(resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size,
                                       skip_system_fonts=True))


def _microsoft_catalogue(iconify_flat: Path) -> set[str]:
    chars = json.loads((iconify_flat / "chars.json").read_text())
    return {normalize_key(k) for k in chars}


def _iconify_svgs(root: Path) -> dict[str, str]:
    """Iconify JSON (chars.json codepoint -> icon name, icons.json bodies) -> key -> square SVG."""
    chars = json.loads((root / "chars.json").read_text())
    data = json.loads((root / "icons.json").read_text())
    icons, aliases = data["icons"], data.get("aliases", {})
    default_w, default_h = data.get("width", 16), data.get("height", 16)
    svgs = {}
    for codepoints, name in sorted(chars.items()):
        flip, icon = False, None
        while icon is None:
            if name in icons:
                icon = icons[name]
            else:
                flip ^= bool(aliases[name].get("hFlip"))
                name = aliases[name]["parent"]
        w, h = icon.get("width", default_w), icon.get("height", default_h)
        left, top = icon.get("left", 0), icon.get("top", 0)
        body = icon["body"]
        if flip ^ bool(icon.get("hFlip")):
            body = f'<g transform="translate({2 * left + w} 0) scale(-1 1)">{body}</g>'
        side = max(w, h)  # a square viewBox centred on the icon keeps the aspect ratio
        x0, y0 = left - (side - w) / 2, top - (side - h) / 2
        svgs[normalize_key(codepoints)] = (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{x0} {y0} {side} {side}">{body}</svg>')
    return svgs
