"""CT phantoms: LiTS-like 3D volumes and lesion-type 2D slices with a CSV manifest.

The real lesion-type data of the paper is private and LiTS cannot be downloaded everywhere, so the
package generates synthetic portal-venous CT with the same file formats. Everything trained or
reported on these files must say it rests on phantoms.

Anatomy (HU of portal-venous CT): air (-1000), body ellipse with subcutaneous fat (-100), abdominal
wall and paraspinal muscle (~50), visceral fat and bowel, ribs and spine (cortex ~650, marrow ~250),
aorta and IVC (blood pool ~140-200), kidneys (~150-170), spleen (~110), stomach, and the liver
(~95-115) with portal and hepatic veins, on the patient's right (image left in radiological display).
Organ outlines are smooth 3D blobs deformed by random low-frequency fields, so every volume differs.

Lesions follow their radiological appearance in the portal-venous phase:

- cyst: water density (about 0-20 HU), homogeneous, sharp round margin (some complicated cysts,
  about 20-45 HU);
- hemangioma: lobulated, peripheral discontinuous nodular enhancement near blood-pool density with a
  hypodense centre filling in centripetally; small ones often enhance uniformly ("flash filling");
- metastasis: hypodense (about 40-70 HU), heterogeneous, ill-defined margin, rim enhancement,
  necrotic centre when large, often several per slice (some cystic, some hypervascular).

Contrast timing, noise, lesion size and partial volume vary per patient, and atypical subtypes exist
(``_SUBTYPES``), so the classes overlap as in real CT: learnable, not trivial. On the default set a
logistic regression on four hand-made lesion features (HU mean and std, area, rim-to-core contrast),
cross-validated by patient, reaches about 0.8 accuracy (tests/test_phantoms.py checks 0.5-0.92).

The 2D slices are a liver-centred field of view (about 18-23 cm at 0.7-0.9 mm pixels for 256 px),
like a targeted reconstruction; the 3D volumes show the whole trunk.

Coordinates: world millimetres in RAS+ (``u`` toward the patient's right, ``v`` anterior, ``z``
superior). 3D volumes are written in the LPS voxel order LiTS files usually have (affine
``diag(-sx, -sy, sz)``); 2D slices are written in RAS order (affine ``diag(sx, sy, sz)``), shape (X, Y).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from monai_liver.constants import DEFAULT_CLASSES, HU_WINDOW
from monai_liver.errors import LiverError

__all__ = ["LESION_TYPES", "make_lits_phantoms", "make_lesion_slices", "preview", "add_arguments", "main"]

#: Lesion appearances this module can draw; ``class_names`` must be taken from these.
LESION_TYPES: tuple[str, ...] = ("cyst", "hemangioma", "metastasis")

#: Share of patients per lesion type (the class mix is deliberately not uniform).
CLASS_MIX: dict[str, float] = {"metastasis": 0.40, "cyst": 0.35, "hemangioma": 0.25}

MANIFEST_COLUMNS: tuple[str, ...] = ("patient_id", "image", "liver", "lesion", "label")

_MIN_SIZE = 32
_BACK = 1.08  # the back is flatter than the front: AP semi-axis / this, posteriorly
_MIN_LITS_SHAPE = (32, 32, 4)

# Independent random streams (numpy SeedSequence entropy), so that one volume or patient does not
# depend on how many others were generated before it.
_STREAM_LITS, _STREAM_PATIENT, _STREAM_PLAN = 1, 2, 3


# --------------------------------------------------------------------------------------------------
# grids, smooth random fields and shapes


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


# --------------------------------------------------------------------------------------------------
# anatomy


class _Anatomy:
    """Per-patient anatomy and contrast parameters (mm, HU); ``render`` draws them on any grid."""

    def __init__(self, rng: np.random.Generator):
        self.body_a = rng.uniform(140, 172)  # body semi-axes (mm): lateral, antero-posterior
        self.body_b = self.body_a * rng.uniform(0.68, 0.8)
        self.fat = rng.uniform(8, 32)  # subcutaneous fat thickness (mm)
        self.wall = rng.uniform(8, 13)  # abdominal wall muscle (mm)
        self.s = s = self.body_a / 155.0  # organ size scale
        self.cav_a = a = self.body_a - self.fat - self.wall  # peritoneal cavity semi-axes
        self.cav_b = b = self.body_b - self.fat - self.wall
        back = -self.body_b / _BACK  # posterior skin (the back is flatter than the front)
        self.spine_v = back + self.fat + 72 * s  # centre of the vertebral body
        self.timing = rng.uniform(0.85, 1.2)  # contrast timing (1 = standard portal-venous)
        blood = 175.0 * self.timing + rng.normal(0, 8)
        self.hu = {
            "air": -1000.0,
            "lung": rng.uniform(-880, -820),
            "fat": rng.uniform(-115, -90),
            "visceral_fat": rng.uniform(-105, -80),
            "muscle": rng.uniform(42, 58),
            "bowel": rng.uniform(30, 50),
            "bowel_content": rng.uniform(5, 25),
            "cortex": rng.uniform(550, 700),
            "marrow": rng.uniform(200, 320),
            "csf": rng.uniform(10, 30),
            "blood": blood,
            "ivc": blood * rng.uniform(0.8, 0.95),
            "portal": blood * rng.uniform(0.85, 1.0),
            "hepatic": blood * rng.uniform(0.75, 0.95),
            "liver": 105.0 + 20.0 * (self.timing - 1.0) + rng.normal(0, 4),
            "spleen": 115.0 + 25.0 * (self.timing - 1.0) + rng.normal(0, 5),
            "kidney": 165.0 * self.timing + rng.normal(0, 8),
            "medulla": 140.0 * self.timing + rng.normal(0, 8),
            "stomach_fluid": rng.uniform(0, 20),
            "bile": rng.uniform(0, 15),
        }
        self.liver_c = np.array([0.42 * a, -0.05 * b, rng.uniform(0, 20)])
        self.liver_semi = np.array([0.56 * a * rng.uniform(0.92, 1.08), 0.85 * b * rng.uniform(0.9, 1.05),
                                    rng.uniform(75, 90)])
        self.lobe_c = np.array([-0.10 * a, 0.36 * b, self.liver_c[2] + rng.uniform(15, 35)])
        self.lobe_semi = np.array([0.42 * a * rng.uniform(0.7, 1.2), 0.33 * b, rng.uniform(40, 55)])
        self.liver_top = self.liver_c[2] + self.liver_semi[2]
        self.fields = {
            "body": _Waves(rng, 5, (150, 300), planar=True),
            "liver": _Waves(rng, 7, (60, 140)),
            "spleen": _Waves(rng, 5, (40, 90)),
            "kidney": _Waves(rng, 5, (40, 90)),
            "bowel": _Waves(rng, 24, (35, 70)),
            "gas": _Waves(rng, 12, (40, 80)),
            "tissue": _Waves(rng, 8, (6, 20)),
        }
        # portal branches from the hilum, hepatic veins toward the IVC (world mm)
        self.vessels = []
        hilum = np.array([0.22 * a, 0.02 * b, self.liver_c[2] - 15])
        for _ in range(rng.integers(5, 8)):
            d = rng.normal(size=3) * np.array([1.0, 0.8, 0.6])
            d[0] = abs(d[0]) * 0.8
            d /= np.linalg.norm(d)
            end = hilum + d * rng.uniform(45, 80) * s
            self.vessels.append((hilum, end, rng.uniform(3.0, 6.0) * s, "portal"))
            mid = (hilum + end) / 2
            d2 = rng.normal(size=3)
            self.vessels.append((mid, mid + d2 / np.linalg.norm(d2) * 30 * s, 2.2 * s, "portal"))
        ivc_top = np.array([24 * s, self.spine_v + 30 * s, self.liver_top - 10])
        for du, dv in ((0.8, 0.3), (0.3, 0.6), (-0.2, 0.55)):
            end = np.array([du * a, dv * b, self.liver_c[2] - rng.uniform(-10, 30)])
            self.vessels.append((ivc_top, end, rng.uniform(3.5, 5.5) * s, "hepatic"))
        # ribs: angle around the body (rad), radius (mm), craniocaudal tilt (rad / mm), z phase (mm);
        # each is cut by an axial plane in bands ~28 mm apart (ribs and intercostal spaces)
        self.ribs = [
            (np.deg2rad(90 + rng.uniform(35, 150) * rng.choice([-1, 1])), rng.uniform(4, 6) * s,
             rng.uniform(-0.002, 0.002), rng.uniform(0, 28))
            for _ in range(rng.integers(10, 16))
        ]
        self.disc_phase = rng.uniform(0, 34)  # intervertebral discs every ~34 mm

    def render(self, g: _Grid) -> tuple[np.ndarray, np.ndarray]:
        """HU (float32, g.shape) and liver mask (bool; portal and hepatic veins inside; IVC,
        gallbladder and kidneys outside)."""
        hu, s, f, a, b = self.hu, self.s, self.fields, self.cav_a, self.cav_b
        out = np.full(g.shape, hu["air"], dtype=np.float32)
        U, V, Z = g.mesh()
        zc = self.liver_c[2]

        def paint(box, mask, value):
            region = out[box]
            np.copyto(region, np.broadcast_to(np.asarray(value, dtype=np.float32), region.shape),
                      where=np.broadcast_to(mask, region.shape))

        def organ(centre, semi, angle=0.0, pad=1.15):
            """Box, sub-grid and normalised radius of an ellipsoidal organ (None when off the grid)."""
            centre = np.asarray(centre, dtype=float)
            half = np.array([max(semi[:2]), max(semi[:2]), semi[2]]) * pad
            box = g.box(centre - half, centre + half)
            if box is None:
                return None, None, None
            sub = g.sub(box)
            return box, sub, _ellipsoid_r(*sub.mesh(), centre, semi, angle)

        allz = (slice(None), slice(None), slice(None))
        # trunk outlines barely change over a few centimetres of z: drawn once, (X, Y, 1)
        wobble = 1.0 + 0.02 * f["body"].grid(_Grid(g.axes[0], g.axes[1], [0.0]))
        v_flat = np.where(V < 0, V * _BACK, V)
        r_body = _ellipsoid_r(U, v_flat, 0, (0, 0, 0), (self.body_a, self.body_b, 1)) / wobble
        r_wall = _ellipsoid_r(U, v_flat, 0, (0, 0, 0), (self.body_a - self.fat, self.body_b - self.fat, 1)) / wobble
        r_cav = _ellipsoid_r(U, v_flat, 0, (0, 0, 0), (a, b, 1)) / wobble
        cavity = r_cav < 1
        cav3 = np.broadcast_to(cavity, g.shape)
        paint(allz, r_body < 1, hu["fat"])
        paint(allz, r_wall < 1, hu["muscle"])
        paint(allz, cavity, hu["visceral_fat"])
        # bowel loops (wall, then fluid or gas lumen), more of them below the liver
        bf = f["bowel"].grid(g)
        thr = 0.55 + 0.006 * np.clip(Z - zc, -60, 120)
        loops = cavity & (bf > thr)
        paint(allz, loops, hu["bowel"])
        lumen = cavity & (bf > thr + 0.35)
        paint(allz, lumen, hu["bowel_content"])
        paint(allz, lumen & (f["gas"].grid(g) > 0.8), hu["air"])
        # lung bases above the diaphragm (the liver dome is drawn over them)
        for side in (-1, 1):
            box, sub, r = organ((side * 0.5 * a, -0.1 * b, self.liver_top + 75), (0.5 * a, 0.85 * b, 110))
            if box is not None:
                paint(box, (r < 1) & cav3[box], hu["lung"] + 20 * f["tissue"].grid(sub))
        # ribs on the inner side of the wall, absent low in the abdomen
        ra, rb = self.body_a - self.fat - self.wall / 2, self.body_b - self.fat - self.wall / 2
        zl = np.clip(g.axes[2], zc - 80, None)
        for theta, r, tilt, phase in self.ribs:
            th = theta + tilt * (zl - zc)
            cu = ra * np.cos(th)
            cv = rb * np.sin(th) * np.where(np.sin(th) > 0, 1.0, 1 / _BACK)
            box = g.box((cu.min() - r, cv.min() - r, zc - 80), (cu.max() + r, cv.max() + r, np.inf))
            if box is None:
                continue
            su, sv_, _ = g.sub(box).mesh()
            zz = g.axes[2][box[2]]
            cut = (np.cos(2 * np.pi * (zz - phase) / 28.0) > 0.3)[None, None]
            d = np.sqrt((su - cu[box[2]][None, None]) ** 2 + (sv_ - cv[box[2]][None, None]) ** 2)
            paint(box, (d < r) & cut, hu["cortex"])
            paint(box, (d < r - 1.5) & cut, hu["marrow"])
        # paraspinal muscles, psoas, vertebra (z-invariant except the psoas)
        sv = self.spine_v
        for side in (-1, 1):
            paint(allz, _ellipsoid_r(U, V, 0, (side * 32 * s, sv - 36 * s, 0), (26 * s, 22 * s, 1)) < 1, hu["muscle"])
            psoas = (6 + 0.12 * np.clip(zc - 20 - Z, 0, 120)) * s
            paint(allz, np.sqrt((U - side * 28 * s) ** 2 + (V - sv - 2 * s) ** 2) < psoas, hu["muscle"])
        vb = np.sqrt((U / (17 * s)) ** 2 + ((V - sv) / (15 * s)) ** 2)
        paint(allz, vb < 1, hu["cortex"])
        paint(allz, vb < 0.85, hu["marrow"])
        disc = np.cos(2 * np.pi * (Z - self.disc_phase) / 34.0) > 0.8
        paint(allz, (vb < 1.0) & disc, hu["muscle"] + 40)
        paint(allz, _ellipsoid_r(U, V, 0, (0, sv - 24 * s, 0), (8 * s, 7 * s, 1)) < 1, hu["csf"])
        for side in (-1, 1):
            paint(allz, _ellipsoid_r(U, V, 0, (side * 10 * s, sv - 31 * s, 0), (6 * s, 5 * s, 1)) < 1, hu["cortex"])
        paint(allz, _ellipsoid_r(U, V, 0, (0, sv - 43 * s, 0), (5 * s, 11 * s, 1)) < 1, hu["cortex"])
        # stomach (left, upper): wall, fluid, air anteriorly
        st_c = np.array([-0.42 * a, 0.25 * b, zc + 30])
        box, sub, r = organ(st_c, (0.3 * a, 0.3 * b, 55))
        if box is not None:
            paint(box, (r < 1) & cav3[box], hu["muscle"] - 10)
            paint(box, (r < 0.88) & cav3[box], hu["stomach_fluid"])
            paint(box, (r < 0.88) & cav3[box] & (sub.mesh()[1] > st_c[1] + 0.1 * b), hu["air"])
        # spleen (left, posterior)
        box, sub, r = organ((-0.68 * a, -0.3 * b, zc + 15), (0.2 * a, 0.38 * b, 55), angle=-0.5, pad=1.2)
        if box is not None:
            paint(box, (r < 1 + 0.08 * f["spleen"].grid(sub)) & cav3[box], hu["spleen"])
        # liver: right lobe and left lobe, deformed, inside the peritoneal cavity
        liver = np.zeros(g.shape, dtype=bool)
        lo = np.minimum(self.liver_c - self.liver_semi * 1.15, self.lobe_c - self.lobe_semi * 1.15)
        hi = np.maximum(self.liver_c + self.liver_semi * 1.15, self.lobe_c + self.lobe_semi * 1.15)
        lbox = g.box(lo, hi)
        if lbox is not None:
            sub = g.sub(lbox)
            m = sub.mesh()
            r_liv = np.minimum(_ellipsoid_r(*m, self.liver_c, self.liver_semi, angle=0.25),
                               _ellipsoid_r(*m, self.lobe_c, self.lobe_semi))
            # no liver in the retroperitoneum around the spine, aorta and crura (the IVC sits at its
            # edge), which widens lower down to hold the right kidney
            su, sv_, sz = m
            half_u = (40 + 1.1 * np.clip(zc - 20 - sz, 0, 80)) * s
            retro = (su / half_u) ** 2 + ((sv_ - sv) / (34 * s)) ** 2 > 1
            inside = retro & np.broadcast_to(r_cav < 0.985, g.shape)[lbox]
            liver[lbox] = (r_liv < 1 + 0.09 * f["liver"].grid(sub)) & inside
            paint(lbox, liver[lbox], hu["liver"] + 3.0 * f["tissue"].grid(sub))
            for p0, p1, rad, kind in self.vessels:
                vbox = g.box(np.minimum(p0, p1) - rad, np.maximum(p0, p1) + rad)
                if vbox is None:
                    continue
                paint(vbox, liver[vbox] & (_segment_dist(*g.sub(vbox).mesh(), p0, p1) < rad), hu[kind])
        # gallbladder, kidneys, aorta, IVC: drawn over the liver and removed from its mask
        box, sub, r = organ((0.12 * a, 0.55 * b, zc - 50), (14 * s, 20 * s, 35), angle=0.6)
        if box is not None:
            gb = (r < 1) & liver[box]
            paint(box, gb, hu["bile"])
            liver[box] &= ~gb
        for side, dz in ((1, -75), (-1, -60)):
            c = np.array([side * 62 * s, sv + 6 * s, zc + dz])
            box, sub, r = organ(c, (26 * s, 21 * s, 55), angle=side * 0.5, pad=1.25)
            if box is None:
                continue
            r = r / (1 + 0.05 * f["kidney"].grid(sub))
            kid = r < 1
            perirenal = (r < 1.3) & liver[box]  # renal impression: perirenal fat between liver and kidney
            paint(box, perirenal, hu["visceral_fat"])
            liver[box] &= ~perirenal
            paint(box, kid, hu["kidney"])
            paint(box, r < 0.6, hu["medulla"])
            sinus = _ellipsoid_r(*sub.mesh(), (c[0] - side * 10 * s, c[1] + 3 * s, c[2]), (9 * s, 7 * s, 30)) < 1
            paint(box, kid & sinus, hu["visceral_fat"])
            liver[box] &= ~kid
        paint(allz, np.sqrt((U + 14 * s) ** 2 + (V - sv - 27 * s) ** 2) < 11 * s, hu["blood"])
        ivc = _ellipsoid_r(U, V, 0, (24 * s, sv + 30 * s, 0), (13 * s, 9 * s, 1)) < 1
        paint(allz, ivc, hu["ivc"])
        liver &= ~np.broadcast_to(ivc, g.shape)
        return out, liver


# --------------------------------------------------------------------------------------------------
# lesions


@dataclass
class _Lesion:
    """One lesion: type, centre (world mm), radius (mm) and appearance parameters (HU, mm)."""

    kind: str
    centre: np.ndarray
    radius: float
    core: float  # core HU
    edge: float  # margin width (mm): sharp for cysts, ill-defined for metastases
    lobulation: float
    shape: _Waves
    texture: _Waves
    texture_amp: float = 0.0
    nodules: list = field(default_factory=list)  # (centre, radius, HU)
    fill: float = 0.0  # hemangioma: centripetal fill-in (0 none .. 1 complete)
    fill_hu: float = 0.0
    rim_gain: float = 0.0  # metastasis: rim enhancement (HU)
    rim_width: float = 0.2
    rim_field: _Waves | None = None
    necrosis: float = 0.0  # metastasis: necrotic core radius (fraction of radius)
    necrosis_hu: float = 20.0
    pv: float = 1.0  # partial-volume contrast factor (slice thickness vs small lesion)

    def extent(self) -> float:
        """Half-width (mm) of a box that holds the lesion and its soft margin."""
        return self.radius * (1 + 3 * self.lobulation) + 3 * self.edge + 2.0

    def render(self, g: _Grid, background: float) -> tuple[np.ndarray, np.ndarray]:
        """(alpha in [0, 1], lesion HU) on grid ``g``; the lesion mask is ``alpha >= 0.5``."""
        u, v, z = g.mesh()
        du, dv, dz = u - self.centre[0], v - self.centre[1], z - self.centre[2]
        dist = np.sqrt(du**2 + dv**2 + dz**2) + 1e-6
        ddir = (du / dist * 10, dv / dist * 10, dz / dist * 10)
        rn = dist / (self.radius * (1.0 + self.lobulation * self.shape(*ddir)))
        alpha = _sigmoid(-(rn - 1.0) * self.radius / max(self.edge, 0.05) * 2.2)
        val = np.full(rn.shape, self.core, dtype=np.float32)
        if self.texture_amp:
            val = val + self.texture_amp * self.texture.grid(g)
        if self.kind == "hemangioma":
            if self.fill > 0:
                val = val + (self.fill_hu - val) * _sigmoid((rn - (1.0 - self.fill)) / 0.07)
            for c, r, h in self.nodules:
                d = np.sqrt((u - c[0]) ** 2 + (v - c[1]) ** 2 + (z - c[2]) ** 2)
                val = val + (h - val) * _sigmoid((r - d) / 0.5)
        if self.kind == "metastasis":
            if self.necrosis:
                val = val + (self.necrosis_hu - val) * _sigmoid((self.necrosis - rn) / 0.08)
            if self.rim_gain:
                ring = np.exp(-(((rn - 0.92) / self.rim_width) ** 2))
                cont = np.clip(0.65 + 0.6 * self.rim_field(*ddir), 0, 1.3)
                val = val + self.rim_gain * ring * cont
        val = background + self.pv * (val - background)
        return alpha, val.astype(np.float32)


def _paint_lesion(les: _Lesion, g: _Grid, hu: np.ndarray, liver: np.ndarray, lesion: np.ndarray,
                  background: float) -> None:
    """Blend ``les`` into ``hu`` inside the liver and mark ``lesion`` (in place, within its box)."""
    half = les.extent()
    box = g.box(les.centre - half, les.centre + half)
    if box is None:
        return
    alpha, val = les.render(g.sub(box), background)
    alpha = alpha * liver[box]
    hu[box] = hu[box] * (1 - alpha) + val * alpha
    lesion[box] |= (alpha >= 0.5) & liver[box]


#: Lesion subtypes per class: (name, share of the class's patients, appearance ranges). HU unless noted
#: ("x blood": times the patient's blood-pool HU), margins and sizes in mm. The atypical subtypes look
#: like another class, as in real CT: complicated cysts and sclerosed hemangiomas like metastases,
#: cystic metastases like cysts, hypervascular metastases like hemangiomas.
_SUBTYPES: dict[str, list[tuple[str, float, dict]]] = {
    "cyst": [
        ("simple", 0.80, {"core": (-5, 15), "texture": (0, 0), "edge": (0.2, 0.5), "lobulation": (0.0, 0.05)}),
        ("complicated", 0.20, {"core": (18, 45), "texture": (3, 8), "edge": (0.4, 1.5), "lobulation": (0.02, 0.08)}),
    ],
    "hemangioma": [
        ("typical", 0.80, {"core": (30, 60), "texture": (0, 3), "edge": (0.4, 1.0), "lobulation": (0.06, 0.14),
                           "nodules": (2, 9), "nodule_x_blood": (0.92, 1.05), "fill": (0.0, 0.6)}),
        ("sclerosed", 0.20, {"core": (45, 75), "texture": (5, 12), "edge": (1.0, 2.5), "lobulation": (0.05, 0.15),
                             "nodules": (1, 4), "nodule_x_blood": (0.6, 0.75), "fill": (0.0, 0.0)}),
    ],
    "metastasis": [
        ("typical", 0.67, {"core": (40, 75), "texture": (5, 14), "edge": (1.2, 3.0), "lobulation": (0.04, 0.12),
                           "rim": (20, 60)}),
        ("cystic", 0.18, {"core": (8, 30), "texture": (1.5, 3), "edge": (0.4, 1.2), "lobulation": (0.02, 0.06),
                          "rim": (0, 12)}),
        ("hypervascular", 0.15, {"core": (60, 95), "texture": (6, 14), "edge": (0.8, 2.0), "lobulation": (0.05, 0.15),
                                 "rim_x_blood": (0.4, 0.7)}),
    ],
}
#: Per class: typical lesion radius range (mm, per patient) and the distribution of lesions per slice.
_SIZE = {"cyst": (3.5, 10), "hemangioma": (6, 16), "metastasis": (4, 12)}
_COUNTS = {"cyst": (0.5, 0.3, 0.2), "hemangioma": (0.75, 0.2, 0.05)}  # metastasis: geometric, drawn per patient


def _draw_lesion(kind: str, rng: np.random.Generator, radius: float, centre, style: dict, anat: _Anatomy,
                 planar: bool, thickness: float = 0.0) -> _Lesion:
    """One lesion of ``kind`` with the patient's ``style`` (subtype and its appearance).

    ``thickness``: slice thickness (mm) of a 2D slice, whose through-plane partial volume pulls a
    small lesion toward the liver's HU; 0 for 3D volumes (their own voxels do that).
    """
    blood = anat.hu["blood"]
    centre = np.asarray(centre, dtype=float)
    p = style["params"]
    les = _Lesion(kind, centre, radius, core=style["core"] + rng.normal(0, 4), edge=rng.uniform(*p["edge"]),
                  lobulation=rng.uniform(*p["lobulation"]), shape=_Waves(rng, 4, (9, 20), planar=planar),
                  texture=_Waves(rng, 8, (3, 9), planar=planar),
                  texture_amp=style["texture"] * rng.uniform(0.7, 1.3),
                  pv=1.0 - rng.uniform(0.0, 1.0) * min(0.8, thickness / (3.0 * radius)))
    if kind == "hemangioma":
        n_nod = int(rng.integers(p["nodules"][0], p["nodules"][1] + 1))
        les.fill = max(0.0, style["fill"] + rng.uniform(-0.1, 0.1)) if p["fill"][1] > 0 else 0.0
        les.fill_hu = blood * rng.uniform(0.65, 0.85)
        if radius < 8.0 and style["subtype"] == "typical" and rng.random() < style["flash"]:
            les.core = blood * rng.uniform(0.75, 0.95)  # flash filling: small ones uniformly bright
            les.fill, n_nod = 0.0, 0
        for _ in range(n_nod):  # peripheral, discontinuous, nodular
            ang = rng.uniform(0, 2 * np.pi)
            elev = 0.0 if planar else rng.uniform(-1.2, 1.2)
            d = np.array([np.cos(ang) * np.cos(elev), np.sin(ang) * np.cos(elev), np.sin(elev)])
            les.nodules.append((centre + d * radius * rng.uniform(0.72, 0.9), max(1.5, radius * rng.uniform(0.12, 0.3)),
                                blood * rng.uniform(*p["nodule_x_blood"]) + rng.normal(0, 8)))
    elif kind == "metastasis":
        les.rim_gain = style["rim"] * rng.uniform(0.6, 1.3)
        les.rim_width = rng.uniform(0.15, 0.3)
        les.rim_field = _Waves(rng, 4, (8, 20), planar=planar)
        if radius > 12 and style["subtype"] != "cystic" and rng.random() < 0.5:
            les.necrosis = rng.uniform(0.3, 0.6)
            les.necrosis_hu = rng.uniform(10, 35)
    return les


def _lesion_style(kind: str, rng: np.random.Generator, anat: _Anatomy) -> dict:
    """Per-patient look of one lesion type: subtype, core HU, texture, rim, size and count tendency."""
    names, shares, params = zip(*_SUBTYPES[kind])
    i = int(rng.choice(len(names), p=np.asarray(shares) / np.sum(shares)))
    p = params[i]
    style = {"subtype": names[i], "params": p, "core": rng.uniform(*p["core"]), "texture": rng.uniform(*p["texture"]),
             "size": rng.uniform(*_SIZE[kind])}
    if kind == "hemangioma":
        style.update(fill=rng.uniform(*p["fill"]), flash=rng.uniform(0.3, 0.9), counts=_COUNTS[kind])
    elif kind == "metastasis":
        style["rim"] = rng.uniform(*p["rim"]) if "rim" in p else anat.hu["blood"] * rng.uniform(*p["rim_x_blood"])
        q = rng.uniform(0.3, 0.6)  # often several
        style["counts"] = tuple((1 - q) ** np.arange(6) * q)
    else:
        style["counts"] = _COUNTS[kind]
    return style


def _n_lesions(style: dict, rng: np.random.Generator) -> int:
    p = np.asarray(style["counts"], dtype=float)
    return int(rng.choice(len(p), p=p / p.sum())) + 1


def _place_lesions(liver: np.ndarray, g: _Grid, radii: list[float],
                   rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
    """Centres (world mm) inside the liver, about one radius from its edge (and the image border)
    and from each other. Radii shrink when the liver cannot hold them; lesions that fit nowhere are
    dropped."""
    from scipy import ndimage

    idx = np.nonzero(liver)
    if not len(idx[0]):
        return []
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    flat = [n == 1 for n in g.shape]  # a 2D slice: no edge along z
    pad = [(0, 0) if f_ else (1, 1) for f_ in flat]
    dist = ndimage.distance_transform_edt(np.pad(liver[crop], pad), sampling=g.spacing)
    dist = dist[tuple(slice(p[0], d - p[1]) for p, d in zip(pad, dist.shape))]
    axes = [a[c] for a, c in zip(g.axes, crop)]
    mesh = [a.reshape([-1 if k == j else 1 for k in range(3)]) for j, a in enumerate(axes)]
    placed = []
    for r in sorted(radii, reverse=True):
        room = dist
        for c, rc in placed:  # keep lesions apart (lobulated margins included), no merging
            clear = sum((m - ci) ** 2 for m, ci in zip(mesh, c)) > (rc * 1.25 + r * 1.25 + 2.0) ** 2
            room = np.where(clear, room, 0.0)
        best = float(room.max())
        if best < 2.5:
            break
        r = min(r, 0.9 * best)
        cand = np.flatnonzero(room >= max(r, 2.0))
        ijk = np.unravel_index(cand[rng.integers(len(cand))], dist.shape)
        placed.append((np.array([a[i] for a, i in zip(axes, ijk)], dtype=float), r))
    return placed


def _blur_and_noise(hu: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, noise: float,
                    blur_mm: float = 0.8) -> np.ndarray:
    """Scanner blur (Gaussian PSF of ``blur_mm``) then correlated Gaussian noise of std ``noise`` HU -> int16."""
    from scipy import ndimage

    sigma = [blur_mm / sp if n > 1 else 0.0 for sp, n in zip(spacing, hu.shape)]
    out = ndimage.gaussian_filter(hu, sigma=sigma, mode="nearest")
    n = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32),
                                sigma=[0.6 if k > 1 else 0.0 for k in hu.shape])
    out += n * (noise / (n.std() + 1e-6))
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)


# --------------------------------------------------------------------------------------------------
# LiTS-like volumes


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, int(index)])


def _lits_volume(shape: tuple[int, int, int], rng: np.random.Generator, with_lesions: bool):
    """One LiTS-like volume: (HU int16, labels uint8, affine, lesion kinds, lesion types uint8 with
    1 + the index of each lesion's kind in ``LESION_TYPES``), arrays in LPS order."""
    anat = _Anatomy(rng)
    nx, ny, nz = shape
    fov = 2 * anat.body_a + rng.uniform(20, 70)
    sxy = round(fov / max(nx, ny), 3)
    sz = float(rng.choice([2.5, 3.0, 4.0, 5.0])) if nz > 8 else 5.0
    u = (np.arange(nx) - (nx - 1) / 2) * sxy
    v = (np.arange(ny) - (ny - 1) / 2) * sxy + rng.uniform(-10, 10)
    top = anat.liver_top + rng.uniform(0, 25)  # start just above the liver dome
    z = top - (nz - 1) * sz + np.arange(nz) * sz
    g = _Grid(u, v, z)
    hu, liver = anat.render(g)
    lesion = np.zeros(g.shape, dtype=bool)
    types = np.zeros(g.shape, dtype=np.uint8)
    kinds = []
    if with_lesions:
        n = int(rng.integers(1, 6))
        kinds = list(rng.choice(LESION_TYPES, size=n, p=[CLASS_MIX[k] for k in LESION_TYPES]))
        styles = {k: _lesion_style(k, rng, anat) for k in sorted(set(kinds))}
        radii = [float(np.clip(rng.lognormal(np.log(1.4 * styles[k]["size"]), 0.5), 4, 35)) for k in kinds]
        places = _place_lesions(liver, g, radii, rng)
        kinds = kinds[: len(places)]
        for kind, (centre, r) in zip(kinds, places):
            les = _draw_lesion(kind, rng, r, centre, styles[kind], anat, planar=False)
            before = lesion.copy()
            _paint_lesion(les, g, hu, liver, lesion, anat.hu["liver"])
            types[lesion & ~before] = 1 + LESION_TYPES.index(kind)
    labels = liver.astype(np.uint8)
    labels[lesion] = 2
    noise = rng.uniform(10, 20)
    vol = _blur_and_noise(hu, g.spacing, rng, noise, blur_mm=rng.uniform(0.7, 1.1))
    # RAS grid -> LPS voxel order (x and y reversed), the usual LiTS layout
    vol, labels, types = vol[::-1, ::-1].copy(), labels[::-1, ::-1].copy(), types[::-1, ::-1].copy()
    affine = np.diag([-sxy, -sxy, sz, 1.0])
    affine[:3, 3] = [u[-1], v[-1], z[0]]
    return vol, labels, affine, kinds, types


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI-1 file; ``.nii.gz`` is compressed in one piece with a zero gzip time stamp, so the
    same seed gives byte-identical files (nibabel alone streams row by row and stamps the time)."""
    import gzip
    import io

    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if not str(path).endswith(".gz"):
        nib.save(img, str(path))
        return
    buf = io.BytesIO()
    img.to_file_map({"image": nib.FileHolder(fileobj=buf), "header": nib.FileHolder(fileobj=buf)})
    Path(path).write_bytes(gzip.compress(buf.getvalue(), compresslevel=1, mtime=0))


def _prepare_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LiverError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LiverError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    return out


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise LiverError(f"--seed {seed}: the seed must be a whole number >= 0")
    return int(seed)


def _check_lits(n_volumes: int, shape: Sequence[int]) -> tuple[int, int, int]:
    if int(n_volumes) < 0:
        raise LiverError(f"--lits-volumes {n_volumes}: the number of volumes must be >= 0")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < m for s, m in zip(shape, _MIN_LITS_SHAPE)):
        raise LiverError(
            f"--lits-shape {' '.join(map(str, shape))}: a volume needs 3 sizes of at least "
            f"{' x '.join(map(str, _MIN_LITS_SHAPE))} voxels"
        )
    return shape  # type: ignore[return-value]


def _lits_plan(n_volumes: int, seed: int) -> np.ndarray:
    """Which volumes carry lesions: about one in five is lesion-free, at least one when n >= 2."""
    rng = _rng(seed, _STREAM_PLAN, 0)
    free = np.zeros(n_volumes, dtype=bool)
    if n_volumes >= 2:
        k = max(1, int(round(0.2 * n_volumes)))
        free[rng.choice(n_volumes, size=k, replace=False)] = True
    return ~free


def _make_lits(out_dir, n_volumes: int, shape, seed: int) -> tuple[list[Path], dict]:
    shape = _check_lits(n_volumes, shape)
    seed = _check_seed(seed)
    out = _prepare_dir(out_dir)
    plan = _lits_plan(int(n_volumes), seed)
    paths, lesions, free = [], 0, 0
    for i in range(int(n_volumes)):
        vol, lab, affine, kinds, types = _lits_volume(shape, _rng(seed, _STREAM_LITS, i), bool(plan[i]))
        _save_nifti(vol, affine, out / f"volume-{i}.nii.gz")
        _save_nifti(lab, affine, out / f"segmentation-{i}.nii.gz")
        _save_nifti(types, affine, out / f"lesiontypes-{i}.nii.gz")
        paths.append(out / f"volume-{i}.nii.gz")
        lesions += len(kinds)
        free += int(not (lab == 2).any())
    return paths, {"volumes": len(paths), "lesions": lesions, "lesion_free": free, "shape": shape}


def make_lits_phantoms(out_dir: str | os.PathLike, n_volumes: int = 6, shape: Sequence[int] = (160, 160, 48),
                       seed: int = 0) -> list[Path]:
    """Write LiTS-like portal-venous CT volumes to ``out_dir``.

    Files: ``volume-N.nii.gz`` (int16 HU, shape ``shape`` = (X, Y, Z) in LPS voxel order, affine
    ``diag(-sx, -sy, sz)`` with about 1.9-2.6 mm pixels for a 160 grid and 2.5-5 mm slices) and
    ``segmentation-N.nii.gz`` (uint8: 0 background, 1 liver, 2 lesion) and ``lesiontypes-N.nii.gz``
    (uint8: 0, or 1 + k for a lesion of type k of ``LESION_TYPES``: the known type of every lesion, for
    checking the per-lesion class of ``monai-liver infer``). About one volume in five has
    no lesion (at least one when ``n_volumes >= 2``). Deterministic for a given ``seed``.

    Returns:
        the volume paths, in order (the segmentation sits beside each).
    """
    return _make_lits(out_dir, n_volumes, shape, seed)[0]


# --------------------------------------------------------------------------------------------------
# lesion-type 2D slices


def _check_classes(class_names: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(class_names, str):
        class_names = class_names.split(",")
    names = tuple(str(c).strip().lower() for c in class_names)
    unknown = [n for n in names if n not in LESION_TYPES]
    if not names or unknown or len(set(names)) != len(names):
        raise LiverError(
            f"class names {list(class_names)!r}: phantoms can draw only distinct types among {list(LESION_TYPES)}"
        )
    return names


def _patient_classes(n_patients: int, names: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """Class per patient in the CLASS_MIX proportions (largest remainder), shuffled."""
    w = np.array([CLASS_MIX[n] for n in names])
    share = w / w.sum() * n_patients
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts))[: n_patients - counts.sum()]:
        counts[i] += 1
    labels = [n for n, c in zip(names, counts) for _ in range(c)]
    rng.shuffle(labels)
    return labels


def _slices_per_patient(n_patients: int, n_slices: int, rng: np.random.Generator) -> np.ndarray:
    """At least one slice each; the rest spread unevenly (some patients contribute several), at most
    about three times the mean per patient."""
    cap = max(3, int(np.ceil(3 * n_slices / n_patients)))
    w = rng.gamma(0.8, size=n_patients) + 1e-6
    counts = 1 + rng.multinomial(n_slices - n_patients, w / w.sum())
    while (excess := int(np.clip(counts - cap, 0, None).sum())) > 0:
        counts = np.minimum(counts, cap)
        room = np.where(counts < cap, w, 0.0)
        counts += rng.multinomial(excess, room / room.sum())
    return counts


def _patient_slices(pid: str, kind: str, n: int, size: int, rng: np.random.Generator):
    """``n`` slices of one patient: yields (HU int16 (X, Y), liver uint8, lesion uint8, affine)."""
    anat = _Anatomy(rng)
    style = _lesion_style(kind, rng, anat)
    sp = round(rng.uniform(0.7, 0.9) * 256 / size, 4)
    thickness = float(rng.choice([1.0, 2.0, 2.5, 3.0, 5.0]))
    noise = rng.uniform(10, 20)
    blur = rng.uniform(0.6, 1.0)
    fov = sp * size
    cu = anat.body_a + rng.uniform(0, 20) - fov / 2  # liver-centred field of view on the right
    cv = anat.body_b + rng.uniform(0, 25) - fov / 2
    u = cu + (np.arange(size) - (size - 1) / 2) * sp
    v = cv + (np.arange(size) - (size - 1) / 2) * sp
    zs = np.sort(anat.liver_c[2] + rng.uniform(-0.45, 0.45, size=n) * anat.liver_semi[2])[::-1]
    for k in range(n):
        places, z = [], float(zs[k])
        for _ in range(6):
            g = _Grid(u, v, [z])
            hu, liver = anat.render(g)
            radii = [float(np.clip(rng.lognormal(np.log(style["size"]), 0.5), 2.5, 35))
                     for _ in range(_n_lesions(style, rng))]
            places = _place_lesions(liver, g, radii, rng)
            if places:
                break
            z = anat.liver_c[2] + rng.uniform(-0.3, 0.3) * anat.liver_semi[2]  # liver too small here
        if not places:  # the liver phantom always has room at its centre; guard anyway
            raise RuntimeError(f"{pid}: no room for a lesion in the liver phantom")
        lesion = np.zeros(g.shape, dtype=bool)
        for centre, r in places:
            les = _draw_lesion(kind, rng, r, centre, style, anat, planar=True, thickness=thickness)
            _paint_lesion(les, g, hu, liver, lesion, anat.hu["liver"])
        img = _blur_and_noise(hu, g.spacing, rng, noise, blur_mm=blur)[:, :, 0]
        affine = np.diag([sp, sp, thickness, 1.0])
        affine[:3, 3] = [u[0], v[0], z]
        yield img, liver[:, :, 0].astype(np.uint8), lesion[:, :, 0].astype(np.uint8), affine


def _check_slices(n_patients: int, n_slices: int, size: int) -> None:
    if int(n_patients) < 1:
        raise LiverError(f"--patients {n_patients}: at least one patient is needed")
    if int(n_slices) < int(n_patients):
        raise LiverError(f"--slices {n_slices}: fewer slices than patients ({n_patients}); every patient needs one")
    if int(size) < _MIN_SIZE:
        raise LiverError(f"--size {size}: slices must be at least {_MIN_SIZE} pixels")


def _make_slices(out_dir, n_patients: int, n_slices: int, size: int, seed: int,
                 class_names) -> tuple[Path, dict]:
    names = _check_classes(class_names)
    _check_slices(n_patients, n_slices, size)
    seed = _check_seed(seed)
    out = _prepare_dir(out_dir)
    for sub in ("images", "liver", "lesion"):
        (out / sub).mkdir(exist_ok=True)
    plan = _rng(seed, _STREAM_PLAN, 1)
    classes = _patient_classes(int(n_patients), names, plan)
    counts = _slices_per_patient(int(n_patients), int(n_slices), plan)
    width = max(3, len(str(n_patients)))
    rows, stats = [], {n: {"patients": 0, "slices": 0} for n in names}
    for p, (kind, n) in enumerate(zip(classes, counts)):
        pid = f"P{p + 1:0{width}d}"
        stats[kind]["patients"] += 1
        for k, (img, liv, les, affine) in enumerate(_patient_slices(pid, kind, int(n), int(size),
                                                                     _rng(seed, _STREAM_PATIENT, p))):
            name = f"{pid}_{k:02d}.nii.gz"
            _save_nifti(img, affine, out / "images" / name)
            _save_nifti(liv, affine, out / "liver" / name)
            _save_nifti(les, affine, out / "lesion" / name)
            rows.append({"patient_id": pid, "image": f"images/{name}", "liver": f"liver/{name}",
                         "lesion": f"lesion/{name}", "label": kind})
            stats[kind]["slices"] += 1
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return manifest, {"classes": stats, "patients": int(n_patients), "slices": len(rows), "size": int(size)}


def make_lesion_slices(out_dir: str | os.PathLike, n_patients: int = 140, n_slices: int = 332, size: int = 256,
                       seed: int = 0, class_names: Sequence[str] = DEFAULT_CLASSES) -> Path:
    """Write lesion-type 2D CT slices and their manifest (the paper's private set, as phantoms).

    Files under ``out_dir``: ``images/<patient>_<k>.nii.gz`` (int16 HU, shape (size, size) in RAS
    order, pixel spacing about 0.7-0.9 mm at size 256: a liver-centred field of view of ~18-23 cm),
    ``liver/`` and ``lesion/`` (uint8 0/1; the liver mask includes its lesions), and ``manifest.csv``
    with columns ``patient_id, image, liver, lesion, label`` (paths relative to the CSV). Each
    patient has one lesion type and one to several slices; the class mix is about 40% metastasis,
    35% cyst, 25% hemangioma (of the types in ``class_names``). Deterministic for a given ``seed``.

    Returns:
        the manifest path.
    """
    return _make_slices(out_dir, n_patients, n_slices, size, seed, class_names)[0]


# --------------------------------------------------------------------------------------------------
# preview


def _radiological(a: np.ndarray) -> np.ndarray:
    """RAS (X, Y) -> display rows (anterior at the top) x columns (patient's right on the left)."""
    return a[::-1, ::-1].T


def _read_canonical(path: Path, slice_index: int | None = None) -> np.ndarray:
    """A 2D slice (X, Y) in RAS order from a 2D or 3D NIfTI file."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # nibabel raises many types for unreadable files
        raise LiverError(f"{path}: cannot be read as NIfTI ({e})") from None
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise LiverError(f"{path}: expected a 2D or 3D image, got shape {data.shape}")
    canon = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    data = np.asanyarray(canon.dataobj)
    slice_index = 0 if slice_index is None else int(slice_index)
    if not 0 <= slice_index < data.shape[2]:
        raise LiverError(f"{path}: slice {slice_index} is outside the volume ({data.shape[2]} slices)")
    return np.asarray(data[:, :, slice_index], dtype=np.float32)


def preview(manifest_csv: str | os.PathLike, out_png: str | os.PathLike, per_class: int = 4) -> Path:
    """Save a PNG grid of example slices: one row per class, ``per_class`` columns (distinct patients
    where possible), window HU_WINDOW, liver outline green, lesion outline red, radiological display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    manifest_csv = Path(manifest_csv)
    if not manifest_csv.is_file():
        raise LiverError(f"{manifest_csv}: manifest not found")
    if int(per_class) < 1:
        raise LiverError(f"per_class {per_class}: must be at least 1")
    with open(manifest_csv, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise LiverError(f"{manifest_csv}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise LiverError(f"{manifest_csv}: the manifest has no rows")
    classes = list(dict.fromkeys(r["label"] for r in rows))
    order = {c: i for i, c in enumerate(LESION_TYPES)}
    classes.sort(key=lambda c: order.get(c, len(order)))
    picks: dict[str, list[dict]] = {}
    for c in classes:
        seen, chosen = set(), []
        for r in rows:
            if r["label"] == c and r["patient_id"] not in seen:
                seen.add(r["patient_id"])
                chosen.append(r)
        picks[c] = chosen[: int(per_class)]
    ncol = max(len(v) for v in picks.values())
    fig = Figure(figsize=(2.6 * ncol, 2.8 * len(classes)), dpi=100)
    FigureCanvasAgg(fig)
    base = manifest_csv.parent
    lo, hi = HU_WINDOW
    for i, c in enumerate(classes):
        for j in range(ncol):
            ax = fig.add_subplot(len(classes), ncol, i * ncol + j + 1)
            ax.set_axis_off()
            if j >= len(picks[c]):
                continue
            r = picks[c][j]
            sl = int(r["slice"]) if r.get("slice") not in (None, "") else None
            img = _read_canonical(base / r["image"], sl)
            ax.imshow(_radiological(img), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            for key, colour in (("liver", "lime"), ("lesion", "red")):
                m = _read_canonical(base / r[key], sl)
                if m.shape != img.shape:
                    raise LiverError(f"{base / r[key]}: mask shape {m.shape} differs from image {img.shape}")
                if (m > 0).any():
                    ax.contour(_radiological((m > 0).astype(float)), levels=[0.5], colors=colour, linewidths=0.7)
            ax.set_title(f"{c} · {r['patient_id']}", fontsize=9)
            ax.text(0.02, 0.5, "R", color="yellow", fontsize=8, transform=ax.transAxes, va="center")
    fig.suptitle(f"{manifest_csv.name}: window [{lo:g}, {hi:g}] HU, liver green, lesion red "
                 "(radiological view)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out_png = Path(out_png)
    _prepare_dir(out_png.parent)
    fig.savefig(str(out_png))
    return out_png


# --------------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder: writes OUT/lits/ and OUT/lesions/")
    parser.add_argument("--lits-volumes", type=int, default=6, metavar="N", help="LiTS-like 3D volumes (default 6)")
    parser.add_argument("--lits-shape", type=int, nargs=3, default=(160, 160, 48), metavar=("X", "Y", "Z"),
                        help="voxels per LiTS-like volume (default 160 160 48)")
    parser.add_argument("--patients", type=int, default=140, help="lesion-type patients (default 140)")
    parser.add_argument("--slices", type=int, default=332, help="lesion-type 2D slices in all (default 332)")
    parser.add_argument("--size", type=int, default=256, help="pixels per 2D slice side (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files (default 0)")
    parser.add_argument("--preview", metavar="PNG", default=None, help="also save a preview grid of the slices")


def main(args: argparse.Namespace) -> int:
    # validate everything before writing anything
    _check_lits(args.lits_volumes, args.lits_shape)
    _check_slices(args.patients, args.slices, args.size)
    _check_seed(args.seed)
    out = _prepare_dir(args.out)
    _, lits = _make_lits(out / "lits", args.lits_volumes, args.lits_shape, args.seed)
    manifest, les = _make_slices(out / "lesions", args.patients, args.slices, args.size, args.seed, DEFAULT_CLASSES)
    per_class = ", ".join(f"{c} {s['slices']} slices / {s['patients']} patients" for c, s in les["classes"].items())
    text = (
        f"Wrote {lits['volumes']} LiTS-like volumes ({'x'.join(map(str, lits['shape']))} voxels, "
        f"{lits['lesions']} lesions, {lits['lesion_free']} lesion-free) to {out / 'lits'}, and "
        f"{les['slices']} lesion-type slices ({les['size']}x{les['size']}) from {les['patients']} patients "
        f"({per_class}) to {manifest}. These are synthetic phantoms (seed {args.seed}), not patient data."
    )
    if args.preview:
        png = preview(manifest, args.preview)
        text += f" Preview: {png}."
    print(text)
    return 0
