"""Image jobs: a grid of a class (or a row per class) with classifier-free guidance, or completions of an image
(one of the run's test images, or an uploaded picture converted in memory to the model's size and levels) in a
region the user drew; streamed as a picture of the samples every few reverse steps.

Events: ``start`` (the all-masked picture and a caption), ``frame`` (the picture as a PNG data URL and the fraction
still masked; the first step's at once, later ones at most one each :data:`FRAME_SECONDS`), then ``done`` (the
final picture, network calls, seconds)."""

from __future__ import annotations

import base64
import binascii
import io
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from md4.device import autocast
from md4.generation.pictures import rows_of, tile
from md4.sampling import MAX_GUIDANCE, sample
from md4.serve.catalog import ServedRun, Settings, png_data_url
from md4.serve.fields import Fields, RequestError
from md4.serve.jobs import Emit, Event, Limits

FRAME_SECONDS = 0.1  # the shortest time between two streamed pictures
MAX_UPLOAD_PIXELS = 4096 * 4096  # larger pictures are refused before they are decoded
ALL_CLASSES = "all"


@dataclass
class ImageJob:
    """A checked image request: z_1 (the given pixels kept, mask ids elsewhere), the labels and the settings."""

    run: ServedRun
    init: torch.Tensor  # [N, H, W, C]
    labels: torch.Tensor | None
    guidance: float
    settings: Settings
    per_row: int
    caption: str  # what the picture shows, in words

    def picture(self, z: torch.Tensor) -> str:
        codec = self.run.loaded.codec
        return png_data_url(codec, tile(rows_of(codec, z.cpu(), self.per_row)))

    def __call__(self, emit: Emit) -> Event:
        """Run the reverse process, emitting the start and the pictures; the ``done`` event."""
        mask_id = self.run.model.mask_id
        emit({"type": "start", "frame": self.picture(self.init), "caption": self.caption})
        shown = -math.inf  # the first step is shown at once, later ones at most every FRAME_SECONDS

        def on_step(z: torch.Tensor) -> None:
            nonlocal shown
            if time.perf_counter() - shown >= FRAME_SECONDS:
                masked = float((z == mask_id).double().mean())
                emit({"type": "frame", "frame": self.picture(z), "masked": round(masked, 4)})
                shown = time.perf_counter()

        started = time.perf_counter()
        with autocast(self.run.device, self.run.precision):
            out = sample(
                self.run.model,
                init=self.init,
                labels=self.labels,
                guidance=self.guidance,
                on_step=on_step,
                **self.settings.options(),
            )
        seconds = round(time.perf_counter() - started, 3)
        return {"type": "done", "frame": self.picture(out.tokens), "nfe": out.nfe, "seconds": seconds}


def image_job(run: ServedRun, fields: Fields, limits: Limits) -> ImageJob:
    """The image job a request asks for (``mode``: ``grid`` or ``infill``), or one sentence saying what to change."""
    if not run.images:
        raise RequestError(f"{run.name} is a text run; use its text controls.")
    settings = run.settings(fields, limits)
    classes = run.model.num_classes
    guidance = fields.number("guidance", 0.0, MAX_GUIDANCE, 1.0) if classes else 1.0
    picked = fields.body.get("label", ALL_CLASSES)
    if classes and picked != ALL_CLASSES and picked is not None:
        picked = fields.integer("label", 0, classes - 1)
    num = fields.integer("num", 1, limits.samples, 1)
    guided = f"guidance {guidance:g}" if classes else "an unconditional model"
    if fields.choice("mode", ("grid", "infill"), "grid") == "infill":
        given = source_image(run, fields, limits)
        hole = drawn_hole(fields, run.loaded.codec.data_shape)
        init = torch.where(hole, torch.full_like(given, run.model.mask_id), given)[None].repeat(num, 1, 1, 1)
        label = classes if picked in (ALL_CLASSES, None) else picked  # no class chosen: the "no label" id
        labels = None if not classes else torch.full((num,), label, dtype=torch.long)
        per_row = min(num, 8)
        condition = guided if not classes else "no class" if label == classes else f"class {label}, {guided}"
        caption = f"Completions of the picture on the left, its pink region filled ({condition})."
    elif classes and picked == ALL_CLASSES:
        if num * classes > limits.samples:
            raise RequestError(
                f"{num} of each of {classes} classes is {num * classes} images; this server draws at most "
                f"{limits.samples} in a job; ask for {limits.samples // classes} of each or pick one class."
            )
        labels, per_row = torch.arange(classes).repeat_interleave(num), num
        init = torch.full((num * classes, *run.model.data_shape), run.model.mask_id, dtype=torch.long)
        caption = f"A row per class, 0 to {classes - 1} from the top ({guided})."
    else:
        labels = None if not classes else torch.full((num,), picked, dtype=torch.long)
        init = torch.full((num, *run.model.data_shape), run.model.mask_id, dtype=torch.long)
        per_row = math.ceil(math.sqrt(num))
        caption = f"Class {picked} ({guided})." if classes else f"Samples of {guided}."
    device = run.device
    labels = None if labels is None else labels.to(device)
    return ImageJob(run, init.to(device), labels, guidance, settings, per_row, caption)


def source_image(run: ServedRun, fields: Fields, limits: Limits) -> torch.Tensor:
    """The image to complete: one of the run's test images (``test``: its index) or an uploaded picture (``png``:
    base64, with ``invert``), as tokens [H, W, C]."""
    if fields.body.get("png") is None:
        if not run.test_images:
            raise RequestError(run.test_note or f"{run.name} has no test images; upload a picture instead.")
        index = fields.integer("test", 0, len(run.test_images) - 1)
        return torch.as_tensor(run.test_images[index][0])
    data = decoded_upload(fields.text("png", limits.request_bytes))
    return torch.as_tensor(uploaded_tokens(data, run.loaded.codec, bool(fields.body.get("invert", False))))


def decoded_upload(text: str) -> bytes:
    """The bytes of a base64 upload (a ``data:`` URL's prefix allowed)."""
    try:
        return base64.b64decode(text.split(",", 1)[-1], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("The upload is not base64 data; choose the picture again.") from None


def uploaded_tokens(data: bytes, codec, invert: bool = False) -> np.ndarray:
    """A picture (PNG, or any format Pillow reads) as the codec's tokens [H, W, C]: transparency over black, grey
    or RGB as the model's channels, ``invert``-ed if asked (dark strokes on light paper for a model of light digits
    on black), resized to the model's height and width by area averaging, quantised to its levels. All in memory."""
    try:
        picture = Image.open(io.BytesIO(data))
        if picture.width * picture.height > MAX_UPLOAD_PIXELS:
            raise RequestError(
                f"The picture is {picture.width}x{picture.height} pixels; upload one of at most "
                f"{MAX_UPLOAD_PIXELS:,} pixels."
            )
        picture = picture.convert("RGBA")
    except (OSError, SyntaxError, Image.DecompressionBombError):
        raise RequestError("The upload is not a picture md4 can read; upload a PNG.") from None
    flat = Image.new("RGBA", picture.size, (0, 0, 0, 255))
    flat.alpha_composite(picture)
    flat = flat.convert("L" if codec.channels == 1 else "RGB")
    if invert:
        flat = ImageOps.invert(flat)
    flat = flat.resize((codec.width, codec.height), Image.Resampling.BOX)
    pixels = np.asarray(flat, dtype=np.uint8).reshape(codec.height, codec.width, codec.channels)
    return codec.from_pixels(pixels)


def drawn_hole(fields: Fields, shape: tuple[int, int, int]) -> torch.Tensor:
    """The region to fill, drawn on the page: ``mask``, a string of ``0`` and ``1`` (``1``: fill), one per pixel
    row by row, as a boolean tensor [H, W, C]."""
    height, width, channels = shape
    drawn = fields.text("mask", height * width)
    if len(drawn) != height * width or set(drawn) - {"0", "1"}:
        raise RequestError(
            f"The mask must be {height * width} characters 0 or 1 (1: fill), one per pixel of {height}x{width}; "
            "draw it again."
        )
    if "1" not in drawn:
        raise RequestError("The mask is empty; draw over the part of the image to fill in.")
    hole = torch.tensor([c == "1" for c in drawn]).reshape(height, width, 1)
    return hole.expand(height, width, channels).clone()
