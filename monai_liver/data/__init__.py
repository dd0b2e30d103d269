"""Data: readers (NIfTI / DICOM / DICOM SEG), phantoms, manifests, datalists, validation, 2D slice cache."""
