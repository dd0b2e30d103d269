"""Grids in world millimetres, smooth random fields and the shapes the phantoms are drawn with."""

from __future__ import annotations


import numpy as np


class _Grid:
    """A rectilinear grid of world points (mm): increasing 1D axes ``u, v, z``; shape (X, Y, Z)."""

    def __init__(self, u, v, z):
        self.axes = tuple(np.atleast_1d(np.asarray(a, dtype=np.float32)) for a in (u, v, z))
        self.shape = tuple(len(a) for a in self.axes)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in self.axes)

    def box(self, lo, hi) -> tuple[slice, slice, slice] | None:
        """Index slices of the points inside the world bounding box [lo, hi]; None when empty."""
        box = tuple(
            slice(int(np.searchsorted(a, lo_, "left")), int(np.searchsorted(a, hi_, "right")))
            for a, lo_, hi_ in zip(self.axes, lo, hi)
        )
        return None if any(b.stop <= b.start for b in box) else box

    def sub(self, box) -> _Grid:
        return _Grid(*(a[b] for a, b in zip(self.axes, box)))

    def mesh(self):
        u, v, z = self.axes
        return u[:, None, None], v[None, :, None], z[None, None, :]


class _Waves:
    """A smooth random field: a sum of plane waves with random direction, wavelength and phase.

    Defined in world coordinates (mm), so the field needs no grid and every slice of a phantom
    agrees with its neighbours. Unit standard deviation (approximately).
    """

    def __init__(self, rng: np.random.Generator, n: int, wavelength: tuple[float, float], planar: bool = False):
        k = rng.normal(size=(n, 3))
        if planar:
            k[:, 2] = 0.0
        k /= np.linalg.norm(k, axis=1, keepdims=True) + 1e-12
        self.k = k * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
        self.phase = rng.uniform(0, 2 * np.pi, size=n)
        amp = rng.uniform(0.5, 1.0, size=n)
        self.amp = amp * np.sqrt(2.0 / np.sum(amp**2))

    def __call__(self, u, v, z) -> np.ndarray:
        """At arbitrary broadcastable points."""
        out = 0.0
        for (ku, kv, kz), ph, a in zip(self.k, self.phase, self.amp):
            out = out + a * np.sin(ku * u + kv * v + kz * z + ph)
        return np.asarray(out, dtype=np.float32)

    def grid(self, g: _Grid) -> np.ndarray:
        """On a rectilinear grid, (X, Y, Z): the waves are separable, sin(a + b + c) = Im(e^ia e^ib e^ic),
        so the sum over waves is one complex matrix product instead of n full-grid sines."""
        u, v, z = (a.astype(np.float64) for a in g.axes)
        n = len(self.phase)
        a = (self.amp * np.exp(1j * self.phase))[:, None] * np.exp(1j * np.outer(self.k[:, 0], u))
        bc = np.exp(1j * np.outer(self.k[:, 1], v))[:, :, None] * np.exp(1j * np.outer(self.k[:, 2], z))[:, None, :]
        out = a.T.astype(np.complex64) @ bc.reshape(n, -1).astype(np.complex64)
        return out.imag.reshape(g.shape).astype(np.float32)


def _ellipsoid_r(u, v, z, centre, semi, angle: float = 0.0) -> np.ndarray:
    """Normalised radius of an ellipsoid (rotated by ``angle`` rad about z): < 1 inside."""
    du, dv, dz = u - centre[0], v - centre[1], z - centre[2]
    if angle:
        c, s = np.cos(angle), np.sin(angle)
        du, dv = c * du + s * dv, -s * du + c * dv
    return np.sqrt((du / semi[0]) ** 2 + (dv / semi[1]) ** 2 + (dz / semi[2]) ** 2).astype(np.float32)


def _segment_dist(u, v, z, a, b) -> np.ndarray:
    """Distance (mm) from every point to the 3D segment a-b."""
    ab = b - a
    t = ((u - a[0]) * ab[0] + (v - a[1]) * ab[1] + (z - a[2]) * ab[2]) / max(float(ab @ ab), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((u - a[0] - t * ab[0]) ** 2 + (v - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2)


def _sigmoid(x) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float32)))).astype(np.float32)
