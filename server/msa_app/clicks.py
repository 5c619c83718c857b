"""The order of an object's clicks, which the interaction rule needs and MONAI Label's requests do not carry.

3D Slicer keeps positive and negative points in two lists and sends both after every click, so a request says
which clicks exist but not in what order they came. The order is recovered from the requests before it: the clicks
of the previous request for the same study, object (segment name), client and slice keep their order, and the new
ones follow (positive before negative, each in list order). Without such a request (a fresh object, or
``reset_state``) that last rule alone gives the order. One click per request, as Slicer sends them, gives the true
order.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

Click = tuple[int, int, int, int]  # (i, j, k, label): a voxel index in the file's own order, 1 positive / 0 negative


def as_clicks(foreground, background) -> list[Click]:
    """Request lists as clicks: positive ones first, each list in its own order."""
    out = []
    for points, label in ((foreground or [], 1), (background or [], 0)):
        for p in points:
            if len(p) != 3:
                raise ValueError(f"a click is a voxel index [i, j, k], got {p}")
            out.append((int(round(float(p[0]))), int(round(float(p[1]))), int(round(float(p[2]))), label))
    return out


def ordered(previous: list[Click], clicks: list[Click]) -> list[Click]:
    """``clicks`` in the order ``previous`` gave them, the ones ``previous`` did not have after them."""
    left = Counter(clicks)
    kept = []
    for c in previous:
        if left[c] > 0:
            kept.append(c)
            left[c] -= 1
    for c in clicks:
        if left[c] > 0:
            kept.append(c)
            left[c] -= 1
    return kept


class ClickHistory:
    """The last click order per (study, client, object, slice); the oldest are forgotten past ``size``."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._orders: OrderedDict[tuple, list[Click]] = OrderedDict()

    def order(self, key: tuple, clicks: list[Click], reset: bool = False) -> list[Click]:
        """The clicks of this request in their order, remembered for the next request with the same key."""
        result = ordered([] if reset else self._orders.pop(key, []), clicks)
        self._orders[key] = result
        while len(self._orders) > self.size:
            self._orders.popitem(last=False)
        return result
