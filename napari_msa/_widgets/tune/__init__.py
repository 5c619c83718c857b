"""The Tune (MSA) dock widget's room: the widget, its annotations (image and labels layers), its run and curve."""
