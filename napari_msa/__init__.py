"""napari-msa: Segment Anything with Medical SAM Adapters, in napari and on the command line."""

# Imported eagerly on purpose: importing torch after Qt/napari segfaulted `napari-msa demo` under Xvfb here.
from .engine import AdapterConfig, CheckpointError, MSAModel, Normalization, Session, load_model

__version__ = "0.1.0"
__all__ = ["AdapterConfig", "CheckpointError", "MSAModel", "Normalization", "Session", "load_model", "__version__"]
