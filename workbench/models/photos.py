"""Bundled photos: the pictures that ship inside installed packages, for training and showing the tiny VAEs.

Only files inside scikit-image's ``skimage/data`` folder and matplotlib's ``sample_data`` folder are
used; nothing is downloaded. ``chelsea`` and ``coffee`` are the held-out set: the training helpers
here never return them.

Images are float tensors ``(3, H, W)`` in ``[-1, 1]``; clips are ``(3, F, H, W)``.

    >>> img = load_photo("chelsea")                    # (3, 300, 451)
    >>> x = photo_to_size(img, 256, 256)               # resized to cover, centre-cropped
    >>> clip = synthetic_clip(img, 9, 256, 256, seed=0)  # a pan and zoom over the photo
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .bundled import COLOUR, FILES, GREY, HELD_OUT, PHOTOS  # noqa: F401  (re-exported; torch-free)


def _folder(package: str) -> Path:
    if package == "skimage":
        try:
            import skimage
        except ModuleNotFoundError as exc:  # pragma: no cover - a dependency
            raise ModuleNotFoundError("the bundled photos need scikit-image: pip install scikit-image") from exc
        return Path(skimage.__file__).parent / "data"
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


def photo_path(name: str) -> Path:
    """The file of a bundled photo; a KeyError naming the accepted names otherwise."""
    try:
        package, file = FILES[name]
    except KeyError:
        raise KeyError(f"unknown photo {name!r}; accepted: {', '.join(photo_names())}") from None
    return _folder(package) / file


def photo_names(split: str = "all") -> tuple[str, ...]:
    """Names of the bundled photos present here: split 'all', 'train' (never a held-out one),
    'colour' (training photos in colour), 'grey' or 'held_out'."""
    if split not in ("all", "train", "colour", "grey", "held_out"):
        raise ValueError(f"split must be all, train, colour, grey or held_out, got {split!r}")
    names = {"all": FILES, "train": FILES, "colour": COLOUR, "grey": GREY, "held_out": HELD_OUT}[split]
    names = [n for n in names if (_folder(FILES[n][0]) / FILES[n][1]).is_file()]
    if split != "held_out" and split != "all":
        names = [n for n in names if n not in HELD_OUT]
    return tuple(names)


@lru_cache(maxsize=64)
def _load(name: str) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(photo_path(name)) as im:
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(white, im)
        im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def load_photo(name: str) -> torch.Tensor:
    """A bundled photo as a float32 tensor (3, H, W) in [-1, 1] (alpha composited over white)."""
    return _load(name).clone()


def to_tensor(array) -> torch.Tensor:
    """An image array (H, W), (H, W, 3|4) or (3, H, W); uint8 in [0, 255] or float in [0, 1] -> (3, H, W) in [-1, 1].

    A float torch tensor shaped (3, H, W) is taken as already in [-1, 1]."""
    import numpy as np

    if isinstance(array, torch.Tensor):
        t = array.detach()
        if t.dim() == 3 and t.shape[0] in (1, 3) and t.is_floating_point():
            return t.float().expand(3, -1, -1).clone()
        array = t.cpu().numpy()
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"an image array must be (H, W), (H, W, C) or (C, H, W), got shape {a.shape}")
    if a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] == 4:  # alpha over white
        alpha = a[..., 3:].astype(np.float32) / (255.0 if a.dtype == np.uint8 else 1.0)
        top = 255.0 if a.dtype == np.uint8 else 1.0
        a = (a[..., :3].astype(np.float32) * alpha + top * (1 - alpha)).astype(a.dtype)
    t = torch.from_numpy(np.array(a, copy=True)).float().permute(2, 0, 1)
    t = t / 127.5 - 1.0 if a.dtype == np.uint8 or t.max() > 1.5 else t * 2.0 - 1.0
    return t.expand(3, -1, -1).clone()


def photo_to_size(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize (antialiased bilinear) so the image covers height x width, then centre-crop.

    Works on (3, H, W) and on clips (3, F, H, W)."""
    clip = img.dim() == 4
    x = img.permute(1, 0, 2, 3) if clip else img[None]
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    x = x[..., top:top + height, left:left + width].clamp(-1, 1)
    return x.permute(1, 0, 2, 3).contiguous() if clip else x[0].contiguous()


# ------------------------------------------------------------------------------------ camera windows


def _windows(img: torch.Tensor, cy, cx, half_h, half_w, height: int, width: int) -> torch.Tensor:
    """Bilinear samples of windows (centre cy, cx and half sizes in source pixels, each a (N,) tensor)
    of a (3, H, W) image -> (N, 3, height, width). Windows may leave the image (border padding)."""
    H, W = img.shape[-2:]
    dev = img.device
    ys = (torch.arange(height, device=dev, dtype=torch.float32) + 0.5) / height * 2 - 1  # (h,)
    xs = (torch.arange(width, device=dev, dtype=torch.float32) + 0.5) / width * 2 - 1
    py = cy[:, None] + half_h[:, None] * ys[None]  # (N, h) source pixels
    px = cx[:, None] + half_w[:, None] * xs[None]
    gy = (2 * py / H - 1)[:, :, None].expand(-1, -1, width)
    gx = (2 * px / W - 1)[:, None, :].expand(-1, height, -1)
    grid = torch.stack([gx, gy], dim=-1)
    src = img[None].float().expand(len(cy), -1, -1, -1)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _source_for(img: torch.Tensor, zoom_out: float) -> torch.Tensor:
    """A pre-shrunk copy of the image when windows shrink it more than 2x (bilinear sampling aliases)."""
    if zoom_out <= 2:
        return img
    f = zoom_out / 1.5
    h, w = img.shape[-2:]
    return F.interpolate(img[None].float(), size=(max(8, round(h / f)), max(8, round(w / f))), mode="bilinear",
                         antialias=True, align_corners=False)[0]


def _camera_path(H: int, W: int, frames: int, height: int, width: int, gen: torch.Generator,
                 min_scale: float = 0.35, pan: float = 0.35, zoom: float = 1.3):
    """A seeded linear pan and zoom inside an H x W image: per-frame centre and half sizes (source pixels)."""
    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=gen))

    aspect = width / height
    fit = min(H, W / aspect)  # tallest window of this aspect that fits
    s0 = u(min_scale, 1.0) * fit
    s1 = min(fit, max(min_scale * fit, s0 * math.exp(u(-math.log(zoom), math.log(zoom)))))
    hh = torch.linspace(s0, s1, frames) / 2
    hw = hh * aspect

    def centre(half_h, half_w):
        return u(half_h, H - half_h), u(half_w, W - half_w)

    cy0, cx0 = centre(s0 / 2, s0 * aspect / 2)
    # The end centre: a pan of up to `pan` window heights, then moved inside the image.
    ang = u(0, 2 * math.pi)
    dist = u(0.3, 1.0) * pan * s0
    cy1 = min(max(cy0 + dist * math.sin(ang), s1 / 2), H - s1 / 2)
    cx1 = min(max(cx0 + dist * math.cos(ang), s1 * aspect / 2), W - s1 * aspect / 2)
    t = torch.linspace(0, 1, frames)
    return cy0 + (cy1 - cy0) * t, cx0 + (cx1 - cx0) * t, hh, hw


def synthetic_clip(img: torch.Tensor, frames: int, height: int, width: int, seed: int = 0,
                   *, pan: float = 0.35, zoom: float = 1.3, min_scale: float = 0.35) -> torch.Tensor:
    """A clip (3, frames, height, width) of a camera panning and zooming over a (3, H, W) photo.

    The path is drawn from `seed`: a window of random size and place moves by up to `pan` window
    heights and zooms by up to `zoom`x in a straight line over the frames; the window's height is
    at least `min_scale` of the tallest that fits."""
    gen = torch.Generator().manual_seed(seed)
    H, W = img.shape[-2:]
    cy, cx, hh, hw = _camera_path(H, W, frames, height, width, gen, min_scale=min_scale, pan=pan, zoom=zoom)
    dev = img.device
    zoom_out = float(2 * hh.min()) / height
    src = _source_for(img, zoom_out)
    k = src.shape[-1] / W
    out = _windows(src, (cy * k).to(dev), (cx * k).to(dev), (hh * k).to(dev), (hw * k).to(dev), height, width)
    return out.permute(1, 0, 2, 3).clamp(-1, 1).contiguous()


# ------------------------------------------------------------------------------------------- training


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small CPU tensor on `device`; on CUDA pinned and asynchronous, so that it does not wait for queued work."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class TrainingPhotos:
    """Seeded random crops and clips of the training photos (never a held-out one), made on `device`.

    Crops: a random photo (colour photos `colour_weight` times as likely as greys), a window from the
    whole short side down to `min_scale` of it, a horizontal flip half the time, and a mild colour
    jitter (brightness, contrast, saturation, a small hue mix) applied alike to input and target.
    """

    def __init__(self, device="cpu", seed: int = 0, names: tuple[str, ...] | None = None,
                 colour_weight: float = 3.0, min_scale: float = 0.25, jitter: float = 1.0):
        names = tuple(names) if names is not None else photo_names("train")
        leaked = set(names) & set(HELD_OUT)
        if leaked:
            raise ValueError(f"held-out photos cannot be trained on: {sorted(leaked)}")
        self.names = names
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)
        self.min_scale = min_scale
        self.jitter = jitter
        # Keep each photo at most 1024 px on its long side, plus a half-size copy for wide windows.
        self.images = []
        for n in names:
            img = load_photo(n)
            big = max(img.shape[-2:])
            if big > 1024:
                img = photo_to_size(img, round(img.shape[1] * 1024 / big), round(img.shape[2] * 1024 / big))
            half = F.interpolate(img[None], scale_factor=0.5, mode="bilinear", antialias=True)[0]
            self.images.append((img.to(self.device), half.to(self.device)))
        w = torch.tensor([colour_weight if n in COLOUR else 1.0 for n in names])
        self.weights = w / w.sum()

    def _rand(self, *shape):
        return torch.rand(shape, generator=self.gen)

    def _pick(self, n: int) -> list[int]:
        return torch.multinomial(self.weights, n, replacement=True, generator=self.gen).tolist()

    def _jitter(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """x: (N, 3, ...) in [-1, 1]; one random colour transform per sample."""
        if self.jitter <= 0:
            return x
        j = self.jitter
        bright = (self._rand(n) - 0.5) * 0.2 * j
        contrast = 1 + (self._rand(n) - 0.5) * 0.3 * j
        sat = 1 + (self._rand(n) - 0.5) * 0.4 * j
        # A small hue change: rotate colours about the grey axis by up to +-0.15 rad (Rodrigues). Any angle for
        # half the samples was tried (data/weights/README.md): wan lost 1.5 dB on chelsea and its eyes stayed brown.
        ang = (self._rand(n) - 0.5) * 0.3 * j
        k = torch.full((3,), 3 ** -0.5)
        kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
        c, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
        m = c * torch.eye(3) + s * kx + (1 - c) * torch.outer(k, k)  # (n, 3, 3)
        params = _to_device(torch.cat([torch.stack([bright, contrast, sat], 1), m.flatten(1)], 1), x.device)
        view = (n, 1) + (1,) * (x.dim() - 2)
        bright, contrast, sat = (params[:, i].view(view).to(x.dtype) for i in range(3))
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * sat
        mean = x.mean(dim=tuple(range(1, x.dim())), keepdim=True)
        x = (x - mean) * contrast + mean + bright
        x = torch.einsum("nij,nj...->ni...", params[:, 3:].view(n, 3, 3).to(x.dtype), x)
        return x.clamp(-1, 1)

    def _window_params(self, H, W, size_h, size_w, frames):
        return _camera_path(H, W, frames, size_h, size_w, self.gen, min_scale=self.min_scale,
                            pan=0.0 if frames == 1 else 0.4, zoom=1.0 if frames == 1 else 1.3)

    def _window(self, idx: int, frames: int, height: int, width: int):
        """A random camera window over photo `idx`: (source image, (4, frames) CPU tensor of the centre and
        half sizes in the source's pixels, flip)."""
        full, half = self.images[idx]
        H, W = full.shape[-2:]
        cy, cx, hh, hw = self._window_params(H, W, height, width, frames)
        zoom_out = float(2 * hh.min()) / height
        src, k = (half, half.shape[-1] / W) if zoom_out > 2.5 else (full, 1.0)
        if zoom_out > 5:  # wider than the half-size copy can serve without aliasing
            src = _source_for(full, zoom_out)
            k = src.shape[-1] / W
        return src, torch.stack([cy, cx, hh, hw]) * k, float(self._rand(1)) < 0.5

    def _batch(self, n: int, frames: int, height: int, width: int) -> torch.Tensor:
        """(n, 3, frames, height, width) random windows, jittered. The window parameters go to the device in one
        copy per batch: on CUDA a copy from pageable memory would wait for the queued training step."""
        windows = [self._window(i, frames, height, width) for i in self._pick(n)]
        params = _to_device(torch.stack([p for _, p, _ in windows]), self.device)  # (n, 4, frames)
        out = []
        for (src, _, flip), p in zip(windows, params):
            w = _windows(src, *p, height, width)  # (frames, 3, h, w)
            out.append((w.flip(-1) if flip else w).permute(1, 0, 2, 3))
        return self._jitter(torch.stack(out), n)

    def images_batch(self, batch: int, size: int) -> torch.Tensor:
        """(batch, 3, size, size) random crops."""
        return self._batch(batch, 1, size, size)[:, :, 0]

    def clips_batch(self, batch: int, frames: int, size: int) -> torch.Tensor:
        """(batch, 3, frames, size, size) synthetic camera-motion clips."""
        return self._batch(batch, frames, size, size)
