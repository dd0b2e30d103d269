"""Liver lesions: the types and their mix, appearance per type (HU, margin, rim, nodules), placement in the liver."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from monai_liver.data.phantoms.anatomy import _Anatomy
from monai_liver.data.phantoms.geometry import _Grid, _Waves, _sigmoid


#: Lesion appearances this module can draw; ``class_names`` must be taken from these.
LESION_TYPES: tuple[str, ...] = ("cyst", "hemangioma", "metastasis")


#: Share of patients per lesion type (the class mix is deliberately not uniform).
CLASS_MIX: dict[str, float] = {"metastasis": 0.40, "cyst": 0.35, "hemangioma": 0.25}


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
