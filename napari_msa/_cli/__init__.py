"""Subcommands of the ``napari-msa`` command line; each module has ``add_parser`` and ``run``."""
