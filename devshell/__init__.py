"""devshell: hermetic development containers, and the pytest harness that proves them."""

__version__ = "0.1.0"
