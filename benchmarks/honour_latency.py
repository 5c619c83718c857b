"""What the honour rule costs the annotator: the wait for correction clicks with and without it, side by side.

Each object of the development set gets the automatic annotator's first six clicks under the shipped rule
(``logits+zoom``) and under ``logits+zoom+honour`` (``engine.prompts.honour``: an ignored click costs one more
decoder pass, a lone click at it, and every edit in force is written into the logits fed back). Clicks 2-6 are
timed; the window each object zooms into is encoded while the annotator looks at click 1's mask, as the Segment
widget does (``Session.prefetch_window``), so the times are decoder passes and what the rules add to them. Default
model as shipped (its runtime and precision as loaded), whole-slice embeddings cached before timing. The two rules
alternate per object.

    python benchmarks/honour_latency.py [--threads 2]
"""

from __future__ import annotations

import statistics

import numpy as np
from zoom_latency import default_model_sessions, time_clicks

RULES = ("logits+zoom", "logits+zoom+honour")
CLICKS = 6


def main() -> None:
    sessions = default_model_sessions(__doc__.splitlines()[0], RULES)
    by_click, _ = time_clicks(sessions, clicks=CLICKS, prefetched=RULES)
    times = {rule: [t for k in sorted(ts) for t in ts[k]] for rule, ts in by_click.items()}
    print(f"clicks 2-{CLICKS} of the development set's objects")
    print("| rule | clicks timed | median | 90th percentile | max | mean |")
    print("|---|---|---|---|---|---|")
    for rule, t in times.items():
        ms = 1e3 * np.asarray(t)
        print(f"| {rule} | {len(t)} | {statistics.median(ms):.0f} ms | {np.percentile(ms, 90):.0f} ms "
              f"| {ms.max():.0f} ms | {ms.mean():.0f} ms |")


if __name__ == "__main__":
    main()
