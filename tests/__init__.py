"""The test suite as a package, so that tests, benchmarks and scripts import the shared
helpers by name (`from tests.core import packets`) without touching sys.path."""
