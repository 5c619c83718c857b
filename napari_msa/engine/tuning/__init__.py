"""Few-shot tuning: ``tune()`` (api), what it takes and reports (tune_types), how much training it gets (budget), the
training pairs and simulated prompts (data), the run (loop), one step's loss (step, losses), the held-out check,
the frozen-prefix encoder cache, several processes (distributed). The top room: it imports every other one but
files."""
