"""The ``soppu`` command line."""
