"""The network: SAM's ViT and LiteMedSAM's TinyViT behind one encoder interface, the architecture registry, the MSA
adapters, and the encoder's input (intensity presets, SAM's transform). torch and segment_anything only; it imports
no other room."""
