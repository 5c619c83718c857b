"""napari widgets: layers ↔ arrays and prompts; all model work goes through the engine's public API on workers."""
