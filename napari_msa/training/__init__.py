"""Build-time training of the weights the package ships (not imported at run time)."""
