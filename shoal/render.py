"""Showing env frames: ANSI text redrawn in a terminal, or drawn into an animated GIF.

Native envs render env 0 as text with ANSI colour codes (SGR sequences). For a GIF each frame
is parsed into a grid of character cells with foreground/background colours and drawn with a
monospace font onto a palette image, so frames are small and quick to write.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shoal.core.fileio import write_bytes_atomic

RGB = tuple[int, int, int]

# Any CSI escape sequence; only SGR ("...m") changes how text looks, the rest is dropped.
CSI = re.compile(r"\x1b\[([0-9;?]*)([@-~])")
OTHER_ESCAPE = re.compile(r"\x1b[^\[]")

# The 16 standard terminal colours (a common xterm-like palette).
BASE_COLORS: list[RGB] = [
    (0, 0, 0), (205, 49, 49), (13, 188, 121), (229, 229, 16),
    (36, 114, 200), (188, 63, 188), (17, 168, 205), (229, 229, 229),
    (102, 102, 102), (241, 76, 76), (35, 209, 139), (245, 245, 67),
    (59, 142, 234), (214, 112, 214), (41, 184, 219), (255, 255, 255),
]  # fmt: skip
DEFAULT_FG: RGB = (220, 220, 220)
DEFAULT_BG: RGB = (14, 14, 18)

MONOSPACE_FONTS = (
    "DejaVuSansMono.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
    "LiberationMono-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
    "Menlo.ttc",
    "/System/Library/Fonts/Menlo.ttc",
    "consola.ttf",
    "cour.ttf",
)


def color_256(index: int) -> RGB:
    """xterm 256-colour index -> RGB."""
    if index < 16:
        return BASE_COLORS[index]
    if index < 232:
        index -= 16
        levels = (0, 95, 135, 175, 215, 255)
        return levels[index // 36], levels[(index // 6) % 6], levels[index % 6]
    gray = 8 + 10 * (index - 232)
    return gray, gray, gray


@dataclass(frozen=True)
class Style:
    fg: RGB | None = None  # None = the default colour
    bg: RGB | None = None
    bold: bool = False
    reverse: bool = False

    def colors(self) -> tuple[RGB, RGB]:
        fg = self.fg or DEFAULT_FG
        bg = self.bg or DEFAULT_BG
        if self.bold and self.fg in BASE_COLORS[:8]:
            # Terminals show bold standard colours in their bright variants.
            fg = BASE_COLORS[BASE_COLORS.index(self.fg) + 8]
        return (bg, fg) if self.reverse else (fg, bg)


def _apply_sgr(style: Style, params: str) -> Style:
    codes = [int(c) if c else 0 for c in params.split(";")] if params else [0]
    fg, bg, bold, reverse = style.fg, style.bg, style.bold, style.reverse
    i = 0
    while i < len(codes):
        code = codes[i]
        if code == 0:
            fg, bg, bold, reverse = None, None, False, False
        elif code == 1:
            bold = True
        elif code == 22:
            bold = False
        elif code == 7:
            reverse = True
        elif code == 27:
            reverse = False
        elif 30 <= code <= 37:
            fg = BASE_COLORS[code - 30]
        elif 90 <= code <= 97:
            fg = BASE_COLORS[code - 90 + 8]
        elif 40 <= code <= 47:
            bg = BASE_COLORS[code - 40]
        elif 100 <= code <= 107:
            bg = BASE_COLORS[code - 100 + 8]
        elif code == 39:
            fg = None
        elif code == 49:
            bg = None
        elif code in (38, 48):
            color: RGB | None = None
            if i + 2 < len(codes) and codes[i + 1] == 5:
                color = color_256(codes[i + 2] % 256)
                i += 2
            elif i + 1 < len(codes) and codes[i + 1] == 2 and i + 4 < len(codes):
                r, g, b = (min(max(c, 0), 255) for c in codes[i + 2 : i + 5])
                color = (r, g, b)
                i += 4
            if code == 38:
                fg = color
            else:
                bg = color
        i += 1
    return Style(fg, bg, bold, reverse)


def parse_ansi(text: str) -> list[list[tuple[str, Style]]]:
    """ANSI text -> rows of (character, style) cells. Tabs become spaces to the next multiple of 8."""
    text = OTHER_ESCAPE.sub("", text.replace("\r\n", "\n"))
    rows: list[list[tuple[str, Style]]] = [[]]
    style = Style()
    pos = 0
    for match in CSI.finditer(text + "\x1b[0m"):
        _append_text(rows, text[pos : match.start()], style)
        if match.group(2) == "m":
            style = _apply_sgr(style, match.group(1))
        pos = match.end()
    _append_text(rows, text[pos:], style)
    while rows and not rows[-1]:
        rows.pop()
    return rows


def _append_text(rows: list[list[tuple[str, Style]]], chunk: str, style: Style) -> None:
    for char in chunk:
        if char == "\n":
            rows.append([])
        elif char == "\t":
            rows[-1].extend((" ", style) for _ in range(8 - len(rows[-1]) % 8))
        elif char == "\r":
            continue
        elif char.isprintable():
            rows[-1].append((char, style))


def strip_ansi(text: str) -> str:
    return "\n".join("".join(c for c, _ in row) for row in parse_ansi(text))


def load_monospace_font(size: int = 16) -> Any:
    """A monospace TrueType font if the system has one, else Pillow's built-in font."""
    from PIL import ImageFont

    for name in MONOSPACE_FONTS:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


class GifWriter:
    """Collects text (or RGB array) frames and writes them as one animated GIF.

    Text frames share one palette (the colours they use, up to 256) and are drawn without
    anti-aliasing, so a frame is a few hundred bytes of LZW instead of a quantized photo.
    """

    def __init__(self, font_size: int = 16) -> None:
        self.frames: list[Any] = []
        self.font_size = font_size

    def add(self, frame: Any) -> None:
        self.frames.append(frame)

    def __len__(self) -> int:
        return len(self.frames)

    def write(self, path: str | Path, fps: float = 15.0) -> Path:
        if not self.frames:
            raise ValueError("no frames to write: play at least one step before writing a GIF")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        images = self._images()
        duration = max(int(round(1000 / fps)), 20)
        buffer = io.BytesIO()
        images[0].save(
            buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )
        return write_bytes_atomic(path, buffer.getvalue())

    def _images(self) -> list[Any]:
        from PIL import Image

        if all(isinstance(frame, str) for frame in self.frames):
            return self._text_images_of(self.frames)
        # Pixel frames (a native game's render_rgb, a Gymnasium env's rgb_array render) or a
        # mix: let Pillow quantize.
        images = []
        for frame in self.frames:
            if isinstance(frame, str):
                images.append(self._text_images_of([frame])[0].convert("RGB"))
            else:
                images.append(Image.fromarray(_enlarged(_as_uint8_rgb(frame))))
        return images

    def _font_for(self, cols: int, rows: int) -> tuple[Any, float, int, bool]:
        """(font, a cell's width, its height, whether every glyph has that width) for a grid of
        `cols` x `rows` cells."""
        # A huge text frame would make a huge GIF: shrink the font to keep the long side near
        # MAX_SIDE pixels (cells are about 0.6 x 1.2 font sizes).
        font_size = self.font_size
        long_side = max(0.6 * cols, 1.2 * rows)
        if long_side * font_size > MAX_SIDE:
            font_size = max(int(MAX_SIDE / long_side), MIN_FONT_SIZE)
        font = load_monospace_font(font_size)
        # The font's advance is fractional (9.64 pixels at size 16) and draw.text places a run's
        # characters at multiples of it, so cells must sit there too: with a rounded width, a
        # run drawn whole drifts away from one drawn in pieces (breakout's right wall shifted
        # on the brick rows, where colour changes split the line into runs).
        advance = max(float(font.getlength("M")), 1.0)
        ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (font_size, 0)
        monospace = font.getlength("i") == font.getlength("M")
        return font, advance, max(ascent + descent, 1), monospace

    def _text_images_of(self, frames: Sequence[str]) -> list[Any]:
        from PIL import Image, ImageDraw

        grids = [parse_ansi(frame) for frame in frames]
        cols = max((len(row) for grid in grids for row in grid), default=1) or 1
        rows = max((len(grid) for grid in grids), default=1) or 1
        font, advance, cell_h, monospace = self._font_for(cols, rows)
        pad = int(advance) // 2

        def column_x(col: int) -> int:
            return pad + int(round(col * advance))

        size = (column_x(cols) + pad, rows * cell_h + 2 * pad)

        palette = _Palette()
        background = palette.index(DEFAULT_BG)
        images = []
        for grid in grids:
            image = Image.new("P", size, background)
            draw = ImageDraw.Draw(image)
            draw.fontmode = "1"  # no anti-aliasing: only palette colours appear
            for r, row in enumerate(grid):
                y = pad + r * cell_h
                for start, end, style in _runs(row):
                    fg, bg = style.colors()
                    x0, x1 = column_x(start), column_x(end)
                    if bg != DEFAULT_BG:
                        draw.rectangle((x0, y, x1 - 1, y + cell_h - 1), fill=palette.index(bg))
                    chars = "".join(c for c, _ in row[start:end])
                    fill = palette.index(fg)
                    if monospace and not any(c in BLOCKS for c in chars):
                        if chars.strip():
                            draw.text((x0, y), chars, font=font, fill=fill)
                        continue
                    for k, char in enumerate(chars):
                        cx, cx_end = column_x(start + k), column_x(start + k + 1)
                        if char in BLOCKS:
                            top, bottom = BLOCKS[char]
                            y_top = y + int(top * cell_h)
                            y_bottom = y + int(bottom * cell_h) - 1
                            draw.rectangle((cx, y_top, cx_end - 1, y_bottom), fill=fill)
                        elif char != " ":
                            draw.text((cx, y), char, font=font, fill=fill)
            images.append(image)
        # Every frame gets the final palette, which holds every colour any frame used.
        flat = palette.flat()
        for image in images:
            image.putpalette(flat)
        return images


MAX_SIDE = 2048
MIN_FONT_SIZE = 6

# Block characters drawn as exact rectangles (fraction of the cell from top to bottom), so
# adjacent blocks tile without the gaps a font's glyphs leave.
BLOCKS = {"█": (0.0, 1.0), "▀": (0.0, 0.5), "▄": (0.5, 1.0)}


def _runs(row: list[tuple[str, Style]]) -> list[tuple[int, int, Style]]:
    runs: list[tuple[int, int, Style]] = []
    start = 0
    for i in range(1, len(row) + 1):
        if i == len(row) or row[i][1] != row[start][1]:
            runs.append((start, i, row[start][1]))
            start = i
    return runs


class _Palette:
    def __init__(self) -> None:
        self.colors: list[RGB] = []
        self.lookup: dict[RGB, int] = {}

    def index(self, color: RGB) -> int:
        found = self.lookup.get(color)
        if found is not None:
            return found
        if len(self.colors) < 256:
            self.lookup[color] = len(self.colors)
            self.colors.append(color)
            return self.lookup[color]

        # Palette full (many true colours): reuse the nearest colour already in it.
        def distance(i: int) -> int:
            return sum((a - b) ** 2 for a, b in zip(self.colors[i], color, strict=True))

        nearest = min(range(256), key=distance)
        self.lookup[color] = nearest
        return nearest

    def flat(self) -> list[int]:
        flat = [channel for color in self.colors for channel in color]
        return flat + [0] * (768 - len(flat))


def _as_uint8_rgb(frame: Any) -> Any:
    import numpy as np

    array = np.asarray(frame)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"a pixel frame must be [height, width, 3 or 4], got shape {array.shape}")
    if array.dtype != np.uint8:
        scale = 255.0 if array.size and float(array.max()) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    return array[..., :3]


# Pixel frames smaller than this (breakout's 160 x 210) are enlarged by a whole factor, pixels
# repeated, so a GIF of a small game is not a postage stamp and its edges stay sharp.
MIN_PIXEL_SIDE = 320


def _enlarged(array: Any) -> Any:
    import numpy as np

    factor = max(1, -(-MIN_PIXEL_SIDE // max(min(array.shape[:2]), 1)))
    if factor == 1:
        return array
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)


class TerminalPlayer:
    """Redraws text frames in place on a terminal (cursor moved back up over the last frame)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.lines = 0

    def show(self, frame: str, status: str = "") -> None:
        text = frame.rstrip("\n")
        if status:
            text += "\n" + status
        out = ["\x1b[?25l"]  # hide the cursor while frames play
        if self.lines:
            out.append(f"\x1b[{self.lines}F")  # to the start of the previous frame's first line
        # Clearing each line's tail and everything below removes leftovers of a larger frame.
        out.append("\x1b[K\n".join(text.split("\n")) + "\x1b[0m\x1b[K\n\x1b[J")
        self.stream.write("".join(out))
        self.stream.flush()
        self.lines = text.count("\n") + 1

    def detach(self) -> None:
        """Leave the last frame on screen; the next one is drawn below it (after other output)."""
        self.lines = 0

    def close(self) -> None:
        self.stream.write("\x1b[?25h")
        self.stream.flush()
