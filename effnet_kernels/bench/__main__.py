"""``python -m effnet_kernels.bench``: the same as ``python -m effnet_kernels bench``."""

import sys

from .cli import main

sys.exit(main())
