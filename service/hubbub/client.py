"""hubbub.client: where the Python client used to live; it is now the package `hubbub_client`.

`from hubbub.client import Client` and every other name of `hubbub_client` keep working: this module
re-exports them (the same objects). The names the client had here that collided with the server's own
classes still resolve, to their new classes, with a DeprecationWarning (see docs/client.md):

| deprecated name here | now               |
|----------------------|-------------------|
| `CommandError`       | `CommandRejected` |
| `Disconnect`         | `Disconnection`   |
| `Publication`        | `Message`         |

Only this module is kept: the old submodules (`hubbub.client.models`, ...) were the client's insides.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from hubbub_client import *  # noqa: F403 (the whole public API, whatever hubbub_client adds to it)
from hubbub_client import __all__ as _current

#: Old name -> the class it now names in hubbub_client.
DEPRECATED_ALIASES: dict[str, str] = {
    "CommandError": "CommandRejected",
    "Disconnect": "Disconnection",
    "Publication": "Message",
}

# The deprecated names stay out of __all__ at run time, so that `import *` does not warn three times.
__all__ = list(_current)

if TYPE_CHECKING:
    # Type checkers see the aliases as the classes themselves; at run time __getattr__ adds the warning.
    from hubbub_client import CommandRejected as CommandError
    from hubbub_client import Disconnection as Disconnect
    from hubbub_client import Message as Publication

    __all__ += ["CommandError", "Disconnect", "Publication"]


def __getattr__(name: str) -> object:
    new = DEPRECATED_ALIASES.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"hubbub.client.{name} is deprecated: use hubbub_client.{new} (the same class)",
        DeprecationWarning,
        stacklevel=2,
    )
    import hubbub_client

    return getattr(hubbub_client, new)
