"""A loaded model: ``MSAModel`` (a network with its weights on a device, what they came from, encode, the embedding
cache key, adapter files in and out) and ``load_model``; where the encoder runs (device, number format, torch or
OpenVINO). Imports the network and files rooms, and the prompts room for the interaction rule a model was trained
for."""
