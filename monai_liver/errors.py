"""User-facing errors: one sentence that names the file and the problem."""


class LiverError(Exception):
    """An error a user can cause and fix (bad file, bad option, missing weights).

    The message is one sentence, starting with the offending path where there is one, e.g.
    ``"data/seg-3.nii.gz: mask value 7 is not allowed (expected 0, 1, 2)"``. The CLI prints it
    as ``error: <message>`` and exits with status 2; it is never shown as a traceback.
    """
