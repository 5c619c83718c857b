"""Weights on disk: Meta's and MSA's ``.pth`` checkpoints read safely (and the atomic write every file uses), the
project's model and adapter file formats, LiteMedSAM's bundled weights. Imports the network room only."""
