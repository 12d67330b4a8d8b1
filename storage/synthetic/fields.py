"""Scalar fields on the patient coordinate grid: the drawing primitives of the phantom.

Every shape is evaluated on float32 coordinate arrays ``(X, Y)`` in patient units (thorax
half-width ~ 1, y pointing down), so one description renders at any pixel size. Profiles
have COMPACT support (exactly zero outside the shape): a finding's change to the image is
then exactly confined to where its field is non-zero, which is what its mask records.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FloatArray = np.ndarray


def smoothstep(edge0: float | FloatArray, edge1: float | FloatArray, x: FloatArray) -> FloatArray:
    """Cubic Hermite step 3t^2 - 2t^3, t = clip((x - edge0) / (edge1 - edge0)); 0 below edge0."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def soft_inside(signed_depth: FloatArray, width: float) -> FloatArray:
    """1 well inside, 0 outside; ``signed_depth`` > 0 inside (patient units), ramp ``width``."""
    return smoothstep(-0.5 * width, 0.5 * width, signed_depth)


def ellipse_radius(
    X: FloatArray, Y: FloatArray, cx: float, cy: float, a: float, b: float, tilt: float = 0.0
) -> FloatArray:
    """Normalised elliptic radius: 1 on the ellipse with semi-axes (a, b) rotated by ``tilt``."""
    dx = X - cx
    dy = Y - cy
    if tilt:
        c, s = np.cos(tilt), np.sin(tilt)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt((dx / a) ** 2 + (dy / b) ** 2)


def compact_bump(r: FloatArray) -> FloatArray:
    """(1 - r^2)^2 for r < 1, else 0: a smooth dome with compact support (Wendland-like)."""
    q = np.clip(1.0 - r * r, 0.0, None)
    return q * q


def flat_disc(r: FloatArray, edge: float) -> FloatArray:
    """1 for r < 1 - edge, smooth ramp to 0 at r = 1 (edge in units of normalised radius)."""
    return 1.0 - smoothstep(1.0 - edge, 1.0, r)


@dataclass(frozen=True)
class NoiseField:
    """Gaussian-smoothed white noise on a fixed grid over patient coordinates, unit std.

    Being defined in patient units (not pixels) the texture looks the same at any image size.
    """

    values: np.ndarray  # (G, G) float32
    extent: float  # grid covers [-extent, extent]^2

    @staticmethod
    def draw(
        rng: np.random.Generator, correlation: float, grid: int = 128, extent: float = 1.6
    ) -> NoiseField:
        """Smooth noise with Gaussian correlation length ``correlation`` (patient units).

        Filtering in Fourier space: multiply by exp(-2 pi^2 sigma^2 |k|^2), the transform of a
        Gaussian kernel of std sigma (in grid cells); periodic wrap is harmless at the border.
        """
        white = rng.standard_normal((grid, grid))
        sigma = correlation / (2.0 * extent / grid)
        k = np.fft.fftfreq(grid)
        k2 = k[:, None] ** 2 + k[None, :] ** 2
        smooth = np.fft.ifft2(np.fft.fft2(white) * np.exp(-2.0 * np.pi**2 * sigma**2 * k2)).real
        smooth /= smooth.std() + 1e-12
        return NoiseField(values=smooth.astype(np.float32), extent=extent)

    def sample(self, X: FloatArray, Y: FloatArray) -> FloatArray:
        """Bilinear interpolation at patient coordinates (clamped at the grid border)."""
        g = self.values.shape[0]
        scale = (g - 1) / (2.0 * self.extent)
        fx = np.clip((X + self.extent) * scale, 0.0, g - 1.001)
        fy = np.clip((Y + self.extent) * scale, 0.0, g - 1.001)
        ix = fx.astype(np.intp)
        iy = fy.astype(np.intp)
        tx = (fx - ix).astype(np.float32)
        ty = (fy - iy).astype(np.float32)
        v = self.values
        top = v[iy, ix] * (1 - tx) + v[iy, ix + 1] * tx
        bottom = v[iy + 1, ix] * (1 - tx) + v[iy + 1, ix + 1] * tx
        return top * (1 - ty) + bottom * ty


def bezier_path(control: np.ndarray, samples: int = 48) -> np.ndarray:
    """Points (samples, 2) on the Bezier curve through control points (n, 2) (de Casteljau)."""
    t = np.linspace(0.0, 1.0, samples)[:, None, None]
    pts = np.broadcast_to(control[None, :, :], (samples, *control.shape)).astype(np.float64)
    while pts.shape[1] > 1:
        pts = (1 - t) * pts[:, :-1] + t * pts[:, 1:]
    return pts[:, 0, :]


def polyline_distance(X: FloatArray, Y: FloatArray, path: np.ndarray, margin: float) -> FloatArray:
    """Distance from every pixel to a polyline (n, 2); pixels farther than ``margin`` from the
    path's bounding box get +inf without being evaluated (keeps thin tubes cheap)."""
    out = np.full(X.shape, np.inf, dtype=np.float32)
    x0, y0 = path.min(axis=0) - margin
    x1, y1 = path.max(axis=0) + margin
    near = (x0 <= X) & (x1 >= X) & (y0 <= Y) & (y1 >= Y)
    if not near.any():
        return out
    px = X[near][:, None]
    py = Y[near][:, None]
    ax, ay = path[:-1, 0][None, :], path[:-1, 1][None, :]
    bx, by = path[1:, 0][None, :], path[1:, 1][None, :]
    dx, dy = bx - ax, by - ay
    # projection parameter of the pixel onto each segment, clamped to the segment
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy + 1e-12), 0.0, 1.0)
    d2 = (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2
    out[near] = np.sqrt(d2.min(axis=1))
    return out


def tube_profile(distance: FloatArray, half_width: float, edge: float) -> FloatArray:
    """1 inside a tube of ``half_width``, compact ramp of ``edge`` outside it."""
    return 1.0 - smoothstep(half_width, half_width + edge, distance)
