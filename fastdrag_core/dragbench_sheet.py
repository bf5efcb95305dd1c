"""Contact sheets of a DragBench run (pillow): one row per sample, source with the drags | result.

Left cell: the source image with each drag drawn like DragBench's ``user_drag.png`` (red handle,
blue target, white arrow; the editable region outside the mask dimmed). Right cell: the edited
image (resized to the source size) with each target as a blue ring and the point where DIFT found
the handle's content (the "tracked" end point used by Mean Distance) as a green dot, joined to its
target by a yellow line whose length is that point's distance. A failed sample gets a grey cell
with the reason.
"""

from __future__ import annotations

import textwrap

from PIL import Image, ImageDraw, ImageFont

RED, BLUE, WHITE, GREEN, YELLOW = (230, 30, 30), (40, 90, 255), (255, 255, 255), (40, 220, 60), (255, 220, 0)
BG, TEXT, GREY = (24, 24, 24), (235, 235, 235), (70, 70, 70)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1
        return ImageFont.load_default()


def _arrow(draw: ImageDraw.ImageDraw, p, q, color, width: int):
    draw.line([p, q], fill=color, width=width)
    dx, dy = q[0] - p[0], q[1] - p[1]
    n = (dx * dx + dy * dy) ** 0.5
    if n < 1e-6:
        return
    ux, uy = dx / n, dy / n
    head = max(6.0, min(0.35 * n, 4.0 * width))
    left = (q[0] - head * (ux - 0.5 * uy), q[1] - head * (uy + 0.5 * ux))
    right = (q[0] - head * (ux + 0.5 * uy), q[1] - head * (uy - 0.5 * ux))
    draw.polygon([q, left, right], fill=color)


def _dot(draw, p, r, fill=None, outline=None, width=1):
    draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=fill, outline=outline, width=width)


def draw_drags(image: Image.Image, handles, targets, mask=None, scale: float = 1.0) -> Image.Image:
    """Source cell: the drags on ``image`` (already resized by ``scale``); ``mask`` bool array
    (source size) or None."""
    img = image.convert("RGB")
    if mask is not None:
        m = Image.fromarray((~mask).astype("uint8") * 255).resize(img.size, Image.NEAREST)
        img = Image.composite(Image.blend(img, Image.new("RGB", img.size, (0, 0, 0)), 0.45), img, m)
    d = ImageDraw.Draw(img)
    w = max(2, round(img.size[0] / 128))
    r = max(3, round(img.size[0] / 50))
    for h, t in zip(handles, targets):
        hp, tp = (h[0] * scale, h[1] * scale), (t[0] * scale, t[1] * scale)
        _arrow(d, hp, tp, WHITE, w)
        _dot(d, hp, r, fill=RED)
        _dot(d, tp, r, fill=BLUE)
    return img


def draw_matches(image: Image.Image, matches, scale: float = 1.0) -> Image.Image:
    """Result cell: targets (blue rings), DIFT-tracked points (green dots), error lines (yellow)."""
    img = image.convert("RGB")
    d = ImageDraw.Draw(img)
    w = max(1, round(img.size[0] / 200))
    r = max(3, round(img.size[0] / 50))
    for m in matches:
        tp = (m["target"][0] * scale, m["target"][1] * scale)
        mp = (m["matched"][0] * scale, m["matched"][1] * scale)
        d.line([tp, mp], fill=YELLOW, width=w)
        _dot(d, tp, r, outline=BLUE, width=max(2, w + 1))
        _dot(d, mp, max(2, r - 1), fill=GREEN)
    return img


def contact_sheet(rows, cell: int = 256, title: str = "") -> Image.Image:
    """Rows of ``{"title", "source": PIL, "result": PIL|None, "handles", "targets", "mask",
    "matches": [...]|None, "caption", "error": str|None}`` -> one image, ``cell`` px per image width."""
    small_px = max(10, cell // 20)
    font, small = _font(max(12, cell // 16)), _font(small_px)
    pad, head = 8, max(18, cell // 12)
    legend = ("left: source, red handle -> blue target (outside the mask dimmed); right: result, "
              "blue ring = target, green = where DIFT found the handle content, yellow = its distance")
    cells = []
    for row in rows:
        src = row["source"].convert("RGB")
        scale = cell / src.size[0]
        size = (cell, max(1, round(src.size[1] * scale)))
        left = draw_drags(src.resize(size, Image.BILINEAR), row["handles"], row["targets"], row.get("mask"), scale)
        if row.get("result") is not None:
            right = row["result"].convert("RGB").resize(size, Image.BILINEAR)
            if row.get("matches"):
                right = draw_matches(right, row["matches"], scale)
        else:
            right = Image.new("RGB", size, GREY)
            dr = ImageDraw.Draw(right)
            msg = "\n".join(textwrap.wrap("FAILED: " + (row.get("error") or "no result"), width=max(16, cell // 8)))
            dr.multiline_text((6, 6), msg, fill=TEXT, font=small)
        cells.append((row, left, right))
    width = 2 * cell + 3 * pad
    legend_lines = textwrap.wrap(legend, width=max(30, int(width / (0.6 * small_px))))
    line_h = head
    height = (pad + (line_h if title else 0) + len(legend_lines) * line_h + pad
              + sum(line_h + left.size[1] + pad for _, left, _ in cells) + pad)
    sheet = Image.new("RGB", (width, height), BG)
    d = ImageDraw.Draw(sheet)
    y = pad
    if title:
        d.text((pad, y), title, fill=TEXT, font=font)
        y += line_h
    for line in legend_lines:
        d.text((pad, y), line, fill=TEXT, font=small)
        y += line_h
    y += pad
    for row, left, right in cells:
        caption = row.get("title", "") + ("   " + row["caption"] if row.get("caption") else "")
        d.text((pad, y), caption, fill=TEXT, font=small)
        y += line_h
        sheet.paste(left, (pad, y))
        sheet.paste(right, (2 * pad + cell, y))
        y += left.size[1] + pad
    return sheet
