"""The suite's fixtures live in the ``support`` package (``tests/support/``), loaded as a plugin here.

Helpers are imported from there, e.g. ``from support.hosts import real_host``; nothing is imported
from this file. Fast unit tests: ``make test-fast`` (``-m "not slow and not integration"``).
"""

pytest_plugins = ["support.plugin"]
