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

Modules: :mod:`.geometry` (grids, smooth random fields, shapes), :mod:`.anatomy` (the trunk),
:mod:`.lesions` (types, appearance, placement), :mod:`.imaging` (scanner blur and noise, random
streams, NIfTI files), :mod:`.lits` (3D volumes), :mod:`.slices` (2D slices + manifest),
:mod:`.preview` (a PNG grid), :mod:`.cli` (``monai-liver phantoms``).
"""

from monai_liver.data.phantoms.cli import add_arguments, main
from monai_liver.data.phantoms.lesions import CLASS_MIX, LESION_TYPES
from monai_liver.data.phantoms.lits import make_lits_phantoms
from monai_liver.data.phantoms.preview import preview
from monai_liver.data.phantoms.slices import MANIFEST_COLUMNS, make_lesion_slices

__all__ = ["LESION_TYPES", "CLASS_MIX", "MANIFEST_COLUMNS", "make_lits_phantoms", "make_lesion_slices", "preview",
           "add_arguments", "main"]
