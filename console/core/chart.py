"""A tiny PNG line chart, in pure Python (zlib and struct only), for the incident report.

``line_chart(points, ...)`` draws one series over time: the values as a line (a gap where a value
is missing), the threshold as a dashed line, a filled square on every FAIL and a cross on every
ERROR (shape, not only colour, tells them apart), dotted verticals where a stage started, and the
axes' ranges in a 3x5 pixel font.  It returns the PNG file's bytes: 8-bit RGB, one IDAT chunk.
No Pillow, no matplotlib: the report must not make a rollback host install a plotting stack.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
INK: Color = (40, 40, 40)
GRID: Color = (225, 225, 225)
LINE: Color = (31, 100, 180)
THRESHOLD: Color = (200, 40, 40)
FAIL_MARK: Color = (200, 40, 40)
ERROR_MARK: Color = (120, 120, 120)
STAGE: Color = (150, 150, 150)

# 3x5 glyphs, one row per string, "#" = ink: digits and what a number or a duration needs
_FONT = {
    "0": ("###", "#.#", "#.#", "#.#", "###"), "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"), "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"), "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"), "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"), "9": ("###", "#.#", "###", "..#", "###"),
    ".": ("...", "...", "...", "...", ".#."), "-": ("...", "...", "###", "...", "..."),
    "+": ("...", ".#.", "###", ".#.", "..."), "e": ("...", "###", "#.#", "##.", "###"),
    "s": ("...", ".##", ".#.", "..#", "##."), "%": ("#.#", "..#", ".#.", "#..", "#.#"),
    "x": ("...", "#.#", ".#.", "#.#", "..."), "=": ("...", "###", "...", "###", "..."),
    " ": ("...", "...", "...", "...", "..."),
}
SCALE = 2  # each font pixel is SCALE x SCALE


@dataclass(frozen=True)
class Point:
    t: float  # seconds since the deployment started
    value: float | None
    verdict: str = ""  # pass | fail | inconclusive | error


class Canvas:
    def __init__(self, width: int, height: int, bg: Color = WHITE) -> None:
        self.width, self.height = width, height
        self.px = bytearray(bytes(bg) * (width * height))

    def set(self, x: int, y: int, c: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.px[i:i + 3] = bytes(c)

    def rect(self, x0: int, y0: int, x1: int, y1: int, c: Color) -> None:
        for y in range(max(0, y0), min(self.height, y1 + 1)):
            for x in range(max(0, x0), min(self.width, x1 + 1)):
                self.set(x, y, c)

    def line(self, x0: int, y0: int, x1: int, y1: int, c: Color, thick: int = 1, dash: int = 0) -> None:
        """Bresenham; ``dash`` > 0 draws ``dash`` pixels on, ``dash`` off."""
        if y0 == y1 and not dash:  # grid lines and axes: one slice per row
            a, b = max(0, min(x0, x1)), min(self.width - 1, max(x0, x1))
            for y in range(max(0, y0), min(self.height, y0 + thick)):
                if a <= b:
                    i = (y * self.width + a) * 3
                    self.px[i:i + (b - a + 1) * 3] = bytes(c) * (b - a + 1)
            return
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        e, n = dx + dy, 0
        px, w, h, cb = self.px, self.width, self.height, bytes(c)
        across = (0, 1) if dx >= -dy else (1, 0)  # thicken across the line's main direction
        while True:
            if not dash or (n // dash) % 2 == 0:
                for k in range(thick):
                    x, y = x0 + k * across[0], y0 + k * across[1]
                    if 0 <= x < w and 0 <= y < h:
                        i = (y * w + x) * 3
                        px[i:i + 3] = cb
            n += 1
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * e
            if e2 >= dy:
                e += dy
                x0 += sx
            if e2 <= dx:
                e += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, c: Color = INK) -> None:
        for ch in s:
            glyph = _FONT.get(ch, _FONT[" "])
            for gy, row in enumerate(glyph):
                for gx, on in enumerate(row):
                    if on == "#":
                        self.rect(x + gx * SCALE, y + gy * SCALE, x + gx * SCALE + SCALE - 1, y + gy * SCALE + SCALE - 1, c)
            x += 4 * SCALE

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self.px))


def text_width(s: str) -> int:
    return len(s) * 4 * SCALE


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG (colour type 2) of ``rgb`` (width*height*3 bytes, rows top down)."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"{len(rgb)} bytes of pixels is not {width}x{height} RGB")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))  # filter 0 (None) per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def label(v: float) -> str:
    """A short axis label in the font's characters: 0.05, 1.2e+03, 12."""
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.3g}"


def _runs(points: Sequence[Point], vals: Sequence[float | None], x_of: Callable[[float], int],
          y_of: Callable[[float], int]) -> list[list[tuple[int, int]]]:
    """The pixels to join, one list per stretch of known values.  Points that fall in the same
    pixel column become that column's first, lowest, highest and last pixel, so a long deployment
    draws a few segments per column (its spikes kept) instead of one per check."""
    runs: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    col: list[int] = []  # the ys of the current column, in order
    x_col = None

    def close_column() -> None:
        if x_col is None or not col:
            return
        ys = [col[0], min(col), max(col), col[-1]] if len(col) > 2 else col
        for y in ys:
            if not cur or cur[-1] != (x_col, y):
                cur.append((x_col, y))
        col.clear()

    for p, v in zip(points, vals, strict=True):
        if v is None:
            close_column()
            if cur:
                runs.append(cur)
            cur, x_col = [], None
            continue
        x = x_of(p.t)
        if x != x_col:
            close_column()
            x_col = x
        col.append(y_of(v))
    close_column()
    if cur:
        runs.append(cur)
    return runs


def line_chart(points: Sequence[Point], *, threshold: float | None = None, stage_starts: Sequence[float] = (),
               log: bool = False, width: int = 640, height: int = 180) -> bytes:
    """The PNG of one gate over time; see the module docstring.  ``log``: a log10 value axis
    (e-values), where values <= 0 are left out."""
    def tr(v: float | None) -> float | None:
        if v is None or not math.isfinite(v):
            return None
        if log:
            return math.log10(v) if v > 0 else None
        return v

    vals = [tr(p.value) for p in points]
    finite = [v for v in vals if v is not None]
    thr = tr(threshold)
    lo_candidates = finite + ([thr] if thr is not None else [])
    lo = min(lo_candidates, default=0.0)
    hi = max(lo_candidates, default=1.0)
    if not log:
        lo = min(lo, 0.0)
    if hi - lo < 1e-12:
        hi = lo + (abs(lo) or 1.0)
    hi += (hi - lo) * 0.08
    ts = [p.t for p in points] or [0.0]
    t0, t1 = min(ts), max(ts)
    if t1 - t0 < 1e-9:
        t1 = t0 + 1.0

    def value_label(v: float) -> str:
        return label(10 ** v) if log else label(v)

    y_labels = [value_label(hi), value_label(lo)] + ([value_label(thr)] if thr is not None else [])
    c = Canvas(width, height)
    left = min(8 + max(text_width(s) for s in y_labels) + 4, width // 3)
    right, top, bottom = width - 12, 10, height - 24

    def x_of(t: float) -> int:
        return round(left + (t - t0) / (t1 - t0) * (right - left))

    def y_of(v: float) -> int:
        return round(bottom - (v - lo) / (hi - lo) * (bottom - top))

    for k in range(5):  # horizontal grid
        y = round(top + k * (bottom - top) / 4)
        c.line(left, y, right, y, GRID)
    for t in stage_starts:
        if t0 <= t <= t1:
            c.line(x_of(t), top, x_of(t), bottom, STAGE, dash=2)
    if thr is not None:
        c.line(left, y_of(thr), right, y_of(thr), THRESHOLD, thick=2, dash=6)
    for run in _runs(points, vals, x_of, y_of):  # one polyline per stretch without a gap
        if len(run) == 1:
            c.rect(run[0][0] - 1, run[0][1] - 1, run[0][0] + 1, run[0][1] + 1, LINE)
        for (xa, ya), (xb, yb) in zip(run, run[1:], strict=False):
            c.line(xa, ya, xb, yb, LINE, thick=2)
    for p, v in zip(points, vals, strict=True):
        x = x_of(p.t)
        if p.verdict == "fail" and v is not None:
            y = y_of(v)
            c.rect(x - 3, y - 3, x + 3, y + 3, FAIL_MARK)
        elif p.verdict == "error":
            y = bottom - 6
            c.line(x - 3, y - 3, x + 3, y + 3, ERROR_MARK, thick=2)
            c.line(x - 3, y + 3, x + 3, y - 3, ERROR_MARK, thick=2)
    c.line(left, top, left, bottom, INK)  # axes
    c.line(left, bottom, right, bottom, INK)

    hi_label, lo_label = y_labels[0], y_labels[1]
    c.text(left - 4 - text_width(hi_label), top, hi_label)
    c.text(left - 4 - text_width(lo_label), bottom - 5 * SCALE, lo_label)
    if thr is not None:
        tl = value_label(thr)
        ty = min(max(y_of(thr) - 5 * SCALE // 2, top + 6 * SCALE), bottom - 11 * SCALE)
        c.text(left - 4 - text_width(tl), ty, tl, THRESHOLD)
    start_label, end_label = f"{label(t0)}s", f"{label(t1)}s"
    c.text(left, bottom + 6, start_label)
    c.text(right - text_width(end_label), bottom + 6, end_label)
    return c.png()
