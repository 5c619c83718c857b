"""Build-time demo code, outside the run-time engine: the synthetic abdominal phantoms (``phantoms``: numpy and
scipy only, so the sample-data menu never loads torch), the shipped demo model's training (``training``) and its
held-out evaluation (``evaluation``), and the generator of the shipped sample images (``samples``).

Nothing here is imported by the package, its widgets or the sample-data menu at start-up; importing this package
imports nothing.
"""
