"""One patient's trunk anatomy (organs, vessels, bones; HU of portal-venous CT), drawn on any grid."""

from __future__ import annotations


import numpy as np

from monai_liver.data.phantoms.geometry import _Grid, _Waves, _ellipsoid_r, _segment_dist


_BACK = 1.08  # the back is flatter than the front: AP semi-axis / this, posteriorly


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
