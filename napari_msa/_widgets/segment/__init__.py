"""The Segment (MSA) dock widget's room: the widget, its form, the object being segmented, its layers and jobs."""
