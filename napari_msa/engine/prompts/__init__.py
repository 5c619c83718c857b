"""Clicks and masks in numpy, torch-free: mask geometry and metrics, the window later clicks are decoded in (zoom),
and the one interaction rule (how a click sequence becomes each step's prompt). Imports only the facts."""
