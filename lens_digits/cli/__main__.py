"""``python -m lens_digits.cli``: the ``lens-digits`` command."""

import sys

from lens_digits.cli import main

sys.exit(main())
