"""napari-msa's MONAI Label app: its settings, the studies it serves, the click order, and the infer tasks.

Lives beside the package (``server/``), never imported by it; runs in the server's own venv (``make server``).
"""
