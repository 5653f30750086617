"""Compose the README picture: input | depth | normals per image, from a `quickstart`/`infer` output folder.

python scripts/demo_picture.py examples/images outputs/demo docs/demo_quickstart.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

HEIGHT = 144  # pixels per row


def main(images_dir: Path, output_dir: Path, target: Path) -> None:
    rows = []
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")):
        parts = [
            Image.open(image).convert("RGB"),
            Image.open(output_dir / "depth_colored" / f"{image.stem}_depth_colored.png").convert("RGB"),
            Image.open(output_dir / "normals_png" / f"{image.stem}_normals.png").convert("RGB"),
        ]
        width = round(parts[0].width * HEIGHT / parts[0].height)
        rows.append([p.resize((width, HEIGHT), Image.Resampling.BILINEAR) for p in parts])
    sheet = Image.new("RGB", (sum(p.width for p in rows[0]) + 8, len(rows) * (HEIGHT + 4)), "white")
    for r, row in enumerate(rows):
        x = 0
        for part in row:
            sheet.paste(part, (x, r * (HEIGHT + 4)))
            x += part.width + 4
    tmp = target.with_name(target.name + ".tmp.png")
    sheet.save(tmp, optimize=True)
    tmp.rename(target)


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
