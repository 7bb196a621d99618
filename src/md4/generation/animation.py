"""The reverse process as a picture: the order in which masked positions unmask (paper Sec. 3: each position leaves
the mask once and then never changes), drawn as an animated GIF (images: the grid as its masks resolve; text: the
tokens appearing) or an animated SVG (text; SMIL ``<animate>``, one file, no script).

The order comes from snapshots of the reverse process (:func:`md4.sample` with ``snapshots=``): a position's step
is the first distinct snapshot in which it is not the mask id, so positions given in z_1 (a prompt, an infilling
template's text, an image's kept region) have step 0. A sampler that unmasks one position per state recorded
(``exact``, or enough snapshots of any other) gives each token its own step; fewer snapshots group them.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from md4.files import atomic_output
from md4.generation import pictures

SUFFIXES = (".gif", ".svg")
IMAGE_SNAPSHOTS = 29  # frames of an image animation: 4 per column of the 8-snapshot strip, so they share states
MAX_TEXT_SNAPSHOTS = 1025  # text: one per token up to 1,024 tokens in all; longer samples group tokens per frame
MAX_GIF_FRAMES = 64  # a text GIF groups the steps into at most this many frames
MAX_GIF_LINES = 200  # a text GIF's lines at most (656 x 3,616 pixels a frame); an SVG has no limit
FRAME_MS = 100  # how long each frame of an image GIF shows
HOLD_MS = 3000  # how long the finished samples show before the animation starts again
WIDTH = 64  # text: characters per line
CELL = (10, 18)  # text GIF: a character's box in pixels (width, height)
SVG_CELL = (9, 18)  # text SVG: the same at font size 15 (a monospace advance of 0.6 em)
MARGIN = 8
BACKGROUND, PLACEHOLDER, GIVEN = (255, 255, 255), (205, 205, 205), (0, 0, 0)
NO_DITHER = Image.Dither.NONE
RAMP = ((49, 54, 149), (44, 123, 182), (26, 152, 80), (230, 145, 30), (215, 48, 39))  # early steps to late ones


def text_snapshots(positions: int) -> int:
    """The snapshots to keep for a text animation of ``positions`` tokens in all: one state per unmasked token,
    at most :data:`MAX_TEXT_SNAPSHOTS`."""
    return min(MAX_TEXT_SNAPSHOTS, positions + 1)


def check_animation_path(path: Path, images: bool) -> None:
    """Refuse an animation file whose suffix md4 cannot write for this kind of run."""
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"--animate {path}: an animation is written as .gif or .svg; name a file ending in one.")
    if images and path.suffix.lower() != ".gif":
        raise ValueError(f"--animate {path}: an image run's animation is a GIF; name a file ending in .gif.")


def distinct_states(trajectory: list[torch.Tensor]) -> list[torch.Tensor]:
    """The snapshots with consecutive repeats dropped (a sampler step that unmasks nothing, or a jump past several
    snapshot thresholds, records the same state more than once)."""
    states: list[torch.Tensor] = []
    for state in trajectory:
        if not states or not torch.equal(states[-1], state):
            states.append(state)
    return states


def unmask_steps(trajectory: list[torch.Tensor], mask_id: int) -> torch.Tensor:
    """For every position of the samples, the index of the first distinct snapshot in which it is not masked (0 for
    positions given in z_1), as a long tensor of the samples' shape."""
    states = distinct_states(trajectory)
    if not states or bool((states[-1] == mask_id).any()):
        raise ValueError("The trajectory does not end in samples with no mask left; sample with snapshots=2 or more.")
    steps = torch.full(states[0].shape, len(states), dtype=torch.long)
    for index in reversed(range(len(states))):
        steps[(states[index] != mask_id).cpu()] = index
    return steps


# -------------------------------------------------------------------- images
def image_frames(codec, trajectory: list[torch.Tensor], per_row: int) -> list[np.ndarray]:
    """One RGB picture [H, W, 3] per distinct snapshot: the samples in rows of ``per_row``, masks in the marker."""
    return [pictures.tile(pictures.rows_of(codec, state, per_row)) for state in distinct_states(trajectory)]


def save_gif(frames: list[np.ndarray], path: Path, scale: int = 1, frame_ms: int = FRAME_MS) -> Path:
    """Write RGB frames [H, W, 3] as a looping GIF, each pixel ``scale`` times in both directions, the last frame
    held for :data:`HOLD_MS`."""
    palette = shared_palette(frames[0], frames[-1])
    images = [
        Image.fromarray(pictures.scaled(frame, scale)).quantize(palette=palette, dither=NO_DITHER) for frame in frames
    ]
    return write_gif(images, path, frame_ms)


def write_gif(images: list[Image.Image], path: Path, frame_ms: int) -> Path:
    """Write palette images as a looping GIF, ``frame_ms`` each, the last held for :data:`HOLD_MS`."""
    durations = [frame_ms] * (len(images) - 1) + [HOLD_MS]
    path = Path(path)
    with atomic_output(path) as tmp:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0, optimize=False
        )
    return path


def shared_palette(first: np.ndarray, last: np.ndarray) -> Image.Image:
    """One palette for every frame: the colours of the first and last frames (a pixel is masked or final, so no
    other frame has others), exact when they are at most 256 (images of few levels, text without antialiasing)."""
    both = Image.fromarray(np.concatenate([first.reshape(-1, 3), last.reshape(-1, 3)])[None])
    return both.quantize(colors=256, dither=NO_DITHER)


# -------------------------------------------------------------------- text
@dataclass
class TextAnimation:
    """Tokens laid out in character cells: each token's cells (row, column, character; "" marks a newline's cell),
    the step at which it unmasked (0: given) and whether it was given in z_1."""

    cells: list[list[tuple[int, int, str]]]
    steps: list[int]
    given: list[bool]
    rows: int
    width: int = WIDTH

    @property
    def last_step(self) -> int:
        return max(self.steps, default=0)

    def colour(self, token: int) -> tuple[int, int, int]:
        """Given text in :data:`GIVEN`; a generated token on :data:`RAMP` by its step (early: blue, late: red)."""
        if self.given[token]:
            return GIVEN
        return ramp((self.steps[token] - 1) / max(self.last_step - 1, 1))


def ramp(fraction: float) -> tuple[int, int, int]:
    """The colour a fraction in [0, 1] of the way along :data:`RAMP`, interpolated linearly."""
    where = min(max(fraction, 0.0), 1.0) * (len(RAMP) - 1)
    low = min(int(where), len(RAMP) - 2)
    mix = where - low
    return tuple(round(a + (b - a) * mix) for a, b in zip(RAMP[low], RAMP[low + 1], strict=True))


def lay_out(pieces: list[list[str]], width: int = WIDTH) -> tuple[list[list[tuple[int, int, str]]], int]:
    """Cells for the tokens of each sample (their text ``pieces``), wrapped at ``width`` characters, newlines kept,
    one blank row between samples; and the number of rows used."""
    cells: list[list[tuple[int, int, str]]] = []
    row = 0
    for sample in pieces:
        col = 0
        for piece in sample:
            token: list[tuple[int, int, str]] = []
            for char in piece:
                if char == "\n":
                    if col < width:
                        token.append((row, col, ""))
                    row, col = row + 1, 0
                    continue
                if col >= width:
                    row, col = row + 1, 0
                token.append((row, col, char if char.isprintable() else " "))
                col += 1
            cells.append(token)
        row += 2
    return cells, max(row - 1, 0)


def text_animation(codec, trajectory: list[torch.Tensor], mask_id: int, width: int = WIDTH) -> TextAnimation:
    """The final samples of ``trajectory`` [N, L] as tokens in cells with their unmasking steps."""
    steps = unmask_steps(trajectory, mask_id)
    final, given = trajectory[-1].cpu(), (trajectory[0] == mask_id).logical_not().cpu()
    pieces = [[codec.decode(np.array([int(token)])) for token in sample] for sample in final]
    cells, rows = lay_out(pieces, width)
    return TextAnimation(cells, steps.flatten().tolist(), given.flatten().tolist(), rows, width)


def reveal_seconds(last_step: int) -> float:
    """How long the tokens take to appear: 30 ms a step, from 2 to 10 seconds."""
    return min(max(0.03 * last_step, 2.0), 10.0)


def svg_text(animation: TextAnimation) -> str:
    """An animated SVG of the tokens appearing: a grey block per masked character, replaced at its token's step by
    the token in its step's colour; the given text bold and underlined. Every token's visibility is a discrete SMIL
    ``<animate>`` over one shared, repeating duration, so the whole loops."""
    reveal = reveal_seconds(animation.last_step)
    total = reveal + HOLD_MS / 1000
    width, height = 2 * MARGIN + animation.width * SVG_CELL[0], 2 * MARGIN + animation.rows * SVG_CELL[1]
    header = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="15" xml:space="preserve">'
    )
    out = [header, f'<rect width="{width}" height="{height}" fill="white"/>']
    for token in range(len(animation.cells)):
        shown_at = reveal * animation.steps[token] / max(animation.last_step, 1) / total
        out += svg_token(animation, token, f'keyTimes="0;{shown_at:.6f}" dur="{total:g}s"')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def svg_token(animation: TextAnimation, token: int, timing: str) -> list[str]:
    """One token's SVG group (``data-step``: its step): its placeholder blocks, hidden at ``timing``'s key time,
    and its characters, shown then; a given token is shown throughout."""
    (cell_w, cell_h), cells, given = SVG_CELL, animation.cells[token], animation.given[token]
    animate = f'<animate attributeName="visibility" {timing} calcMode="discrete" repeatCount="indefinite" values='
    colour = "#{:02x}{:02x}{:02x}".format(*animation.colour(token))
    out = [f'<g data-step="{animation.steps[token]}"' + (' class="given">' if given else ">")]
    if not given:
        out.append('<g fill="#cdcdcd">')
        out += [
            f'<rect x="{MARGIN + col * cell_w}" y="{MARGIN + row * cell_h + 3}" width="{cell_w - 1}" height="{cell_h - 4}"/>'
            for row, col, _ in cells
        ]
        out.append(f'{animate}"visible;hidden"/></g>')
    style = ' font-weight="bold" text-decoration="underline"' if given else ' visibility="hidden"'
    out.append(f'<g fill="{colour}"{style}>')
    out += [
        f'<text x="{MARGIN + col * cell_w}" y="{MARGIN + (row + 1) * cell_h - 4}">{escape(char)}</text>'
        for row, col, char in cells
        if char
    ]
    out.append("</g></g>" if given else f'{animate}"hidden;visible"/></g></g>')
    return out


def text_font(size: int = 15) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans Mono where the system has it, else Pillow's own font (each character is centred in its cell)."""
    try:
        return ImageFont.truetype("DejaVuSansMono.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size - 2)


def gif_text_frames(animation: TextAnimation) -> list[Image.Image]:
    """The tokens appearing, as palette frames: the first shows the given text and a grey block per masked
    character, each next one the tokens of the following steps (at most :data:`MAX_GIF_FRAMES` frames after the
    first), each frame's tokens in its colour on :data:`RAMP`; no antialiasing, so the palette is exact."""
    if animation.rows > MAX_GIF_LINES:
        raise ValueError(
            f"A text GIF shows at most {MAX_GIF_LINES} lines and these samples take {animation.rows}; write an .svg, "
            "or pass a smaller --num or --length."
        )
    last, count = animation.last_step, min(animation.last_step, MAX_GIF_FRAMES)
    bounds = [math.ceil(k * last / count) for k in range(count + 1)] if count else [0]
    colours = [BACKGROUND, PLACEHOLDER, GIVEN, *(ramp((k - 1) / max(count - 1, 1)) for k in range(1, count + 1))]
    frame_of = [
        0 if given else bisect.bisect_left(bounds, step)
        for step, given in zip(animation.steps, animation.given, strict=True)
    ]
    (cell_w, cell_h), font = CELL, text_font()
    image = Image.new("P", (2 * MARGIN + animation.width * cell_w, 2 * MARGIN + max(animation.rows, 1) * cell_h), 0)
    image.putpalette([channel for colour in colours for channel in colour])
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"

    def paint(token: int, shown: bool) -> None:
        for row, col, char in animation.cells[token]:
            x, y = MARGIN + col * cell_w, MARGIN + row * cell_h
            draw.rectangle((x, y, x + cell_w - 1, y + cell_h - 1), fill=0)
            if not shown:
                draw.rectangle((x, y + 2, x + cell_w - 2, y + cell_h - 2), fill=1)
                continue
            colour = 2 if animation.given[token] else 2 + frame_of[token]
            if char:
                draw.text((x + cell_w / 2, y + cell_h / 2), char, fill=colour, font=font, anchor="mm")
            if animation.given[token]:
                draw.line((x, y + cell_h - 2, x + cell_w - 1, y + cell_h - 2), fill=2)

    for token in range(len(animation.cells)):
        paint(token, animation.given[token])
    frames = [image.copy()]
    for frame in range(1, count + 1):
        for token, shown_in in enumerate(frame_of):
            if shown_in == frame:
                paint(token, True)
        frames.append(image.copy())
    return frames


def save_text_animation(path: Path, codec, trajectory: list[torch.Tensor], mask_id: int) -> Path:
    """Write the tokens of ``trajectory``'s samples appearing as ``path``: an animated SVG or a GIF, by its suffix."""
    animation = text_animation(codec, trajectory, mask_id)
    path = Path(path)
    if path.suffix.lower() == ".svg":
        with atomic_output(path) as tmp:
            Path(tmp).write_text(svg_text(animation), encoding="utf-8")
        return path
    frames = gif_text_frames(animation)
    frame_ms = max(20, round(1000 * reveal_seconds(animation.last_step) / max(len(frames) - 1, 1)))
    return write_gif(frames, path, frame_ms)
