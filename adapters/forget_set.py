"""What a forget set's name may be, and the error for a name nothing is registered under.

One rule for every part that handles names (registration, the artifact store, the detector,
the gate policy): a name doubles as a folder name, an engine adapter name and a metric label,
so it is kept boring. Torch-free, so the gateway and the detector can import it cheaply.
"""

from __future__ import annotations

import re

from oblivio.gateway.errors import InvalidArgument, NotFound

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class UnknownForgetSetError(NotFound):
    """No forget set (or no policy override, or no detector) is registered under this name."""


def validate_name(name: object) -> str:
    """``name`` if it follows the rule; InvalidArgument naming the rule otherwise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"invalid forget set name {name!r}: use 1-63 characters of a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return name
