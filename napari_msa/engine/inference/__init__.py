"""Prompts -> masks: decoding (SAM's prompt encoder and mask decoder, called in one place), the ``Session`` (an
image's per-slice embeddings, predict, propagate), propagation's step and stop rules, segment everything."""
