"""``python -m oblivio.gateway.cli``: the same as the ``oblivio`` command."""

import sys

from oblivio.gateway.cli.main import main

sys.exit(main())
