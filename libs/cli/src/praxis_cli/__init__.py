"""The ``praxis`` command line (``praxis --help``)."""
