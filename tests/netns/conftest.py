"""The ring backends' namespace fixture; the helpers live in netns_support.py (a module name
of its own, so these tests import it unambiguously next to the other folders' helpers)."""
from tests.netns.netns_support import topo  # noqa: F401  (the fixture)
