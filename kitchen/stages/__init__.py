"""Built-in stages. Importing this package registers them."""

from kitchen.stages import data, evaluate, persist, session, train  # noqa: F401
from kitchen.stages import distill, preference, rl  # noqa: F401
