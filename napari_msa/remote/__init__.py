"""napari-msa's client of a MONAI Label server running its app (``server/``): the Segment widget's remote model.

Torch-free: the model runs on the server; this side only sends images, clicks and boxes and gets masks back.
"""

from .server import LabelServer, ServerError
from .session import RemoteModel, RemoteSession, connect

__all__ = ["LabelServer", "RemoteModel", "RemoteSession", "ServerError", "connect"]
