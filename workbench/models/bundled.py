"""The bundled photos' registry: names of the pictures that ship inside installed packages (no torch here,
so the CLI checks an `--image` name before importing anything heavy). Loading them: `photos.py`."""

from __future__ import annotations

import os

HELD_OUT = ("chelsea", "coffee")

# name -> (package, file). Colour photos first; greys are converted to three equal channels.
COLOUR = {
    "astronaut": ("skimage", "astronaut.png"),
    "chelsea": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "ihc.png"),
    "retina": ("skimage", "retina.jpg"),
    "motorcycle_left": ("skimage", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "motorcycle_right.png"),
    "color": ("skimage", "color.png"),
    "logo": ("skimage", "logo.png"),
    "horse": ("skimage", "horse.png"),
    "chessboard_rgb": ("skimage", "chessboard_RGB.png"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
    "minduka_present": ("matplotlib", "Minduka_Present_Blue_Pack.png"),
}
GREY = {
    "camera": ("skimage", "camera.png"),
    "moon": ("skimage", "moon.png"),
    "brick": ("skimage", "brick.png"),
    "grass": ("skimage", "grass.png"),
    "gravel": ("skimage", "gravel.png"),
    "coins": ("skimage", "coins.png"),
    "page": ("skimage", "page.png"),
    "text": ("skimage", "text.png"),
    "cell": ("skimage", "cell.png"),
    "clock_motion": ("skimage", "clock_motion.png"),
}
FILES = {**COLOUR, **GREY}
PHOTOS = tuple(FILES)  # every name a job's `image` may take, beside a file path


def check_image(image) -> None:
    """Refuse an `image` that is neither a bundled photo's name nor an existing file, naming both options."""
    if image is None or (isinstance(image, str) and image in FILES) or os.path.isfile(image):
        return
    raise ValueError(f"image {image!r} is neither a bundled photo nor a file; bundled photos: {', '.join(PHOTOS)}")
