"""The ``pairreg`` command: one module per sub-command; each parses arguments and calls the library."""
