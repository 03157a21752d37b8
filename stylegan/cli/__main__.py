"""``python -m stylegan.cli`` (as torchrun starts the training workers): the ``pokegan`` command."""

import sys

from stylegan.cli import main

sys.exit(main())
