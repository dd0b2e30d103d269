"""``python -m monai_liver`` is the ``monai-liver`` command."""

import sys

from monai_liver.cli import main

sys.exit(main())
