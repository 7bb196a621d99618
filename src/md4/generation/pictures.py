"""Pictures of image samples: grids with one row per class, the reverse process as a strip, infilling panels.

Masked sub-pixels (the mask id) are drawn in one marker colour, so a strip shows the masks resolving into an
image. Everything is written as PNG, atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from md4.files import atomic_output
from md4.limits import MAX_PICTURE_SIDE

MASK_COLOUR = (230, 40, 150)
GAP, GAP_VALUE = 2, 128


def rgb(codec, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
    """Tokens [..., H, W, C] (mask ids allowed) as RGB pixels uint8 [..., H, W, 3]; masked pixels in the marker."""
    tokens = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens, dtype=np.int64)
    masked = tokens == codec.vocab_size
    pixels = codec.to_pixels(np.where(masked, 0, tokens))
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    pixels = pixels.copy()
    pixels[masked.any(-1)] = MASK_COLOUR
    return pixels


def tile(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Lay out rows of equally sized RGB images [H, W, 3] with grey gaps (short rows are padded)."""
    h, w, _ = rows[0][0].shape
    cols = max(len(row) for row in rows)
    out = np.full((len(rows) * (h + GAP) - GAP, cols * (w + GAP) - GAP, 3), GAP_VALUE, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            out[r * (h + GAP) : r * (h + GAP) + h, c * (w + GAP) : c * (w + GAP) + w] = image
    return out


def scaled(pixels: np.ndarray, scale: int) -> np.ndarray:
    """RGB pixels [H, W, 3] with each pixel repeated ``scale`` times in both directions (a picture of at most
    :data:`md4.limits.MAX_PICTURE_SIDE` pixels a side)."""
    height, width = pixels.shape[0] * scale, pixels.shape[1] * scale
    if max(height, width) > MAX_PICTURE_SIDE:
        raise ValueError(
            f"The picture would be {width:,} x {height:,} pixels at scale {scale}, more than md4's limit of "
            f"{MAX_PICTURE_SIDE:,} pixels a side; lower the scale (--scale) or draw fewer images."
        )
    return pixels.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else pixels


def save_png(pixels: np.ndarray, path: Path, scale: int = 1) -> Path:
    """Write RGB pixels [H, W, 3] to ``path``, each pixel repeated ``scale`` times in both directions (a picture
    of at most :data:`md4.limits.MAX_PICTURE_SIDE` pixels a side)."""
    pixels = scaled(pixels, scale)
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return path


def save_pictures(out: Path, picture: np.ndarray, strip: np.ndarray | None = None, scale: int = 1) -> list[Path]:
    """Write ``picture`` to ``out`` and, when given, the reverse-process ``strip`` next to it as ``OUT-strip.png``;
    the paths written."""
    out = Path(out)
    written = [save_png(picture, out, scale)]
    if strip is not None:
        written.append(save_png(strip, out.with_name(f"{out.stem}-strip.png"), scale))
    return written


def rows_of(codec, tokens: torch.Tensor, per_row: int) -> list[list[np.ndarray]]:
    """Images [N, H, W, C] in rows of ``per_row``."""
    pictures = list(rgb(codec, tokens))
    return [pictures[i : i + per_row] for i in range(0, len(pictures), per_row)]


def strip(codec, trajectory: list[torch.Tensor], samples: int = 8) -> np.ndarray:
    """The reverse process: one row per sample (at most ``samples``), one column per snapshot, masks resolving."""
    frames = [rgb(codec, state[:samples]) for state in trajectory]
    return tile([[frame[i] for frame in frames] for i in range(len(frames[0]))])


def infill_panel(codec, given: torch.Tensor, hole: torch.Tensor, completions: torch.Tensor) -> np.ndarray:
    """One row: the original, the original with the hole masked, then each completion."""
    masked = torch.where(hole, torch.full_like(given, codec.vocab_size), given)
    return tile([[rgb(codec, given), rgb(codec, masked), *rgb(codec, completions)]])
