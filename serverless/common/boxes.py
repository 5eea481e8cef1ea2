"""The toolkit's one box type: ``Box``, a rectangle's corners ``x1, y1, x2, y2`` in image pixels
(whether x2 and y2 are inside is each function's to say)."""

from typing import TypeVar

Coordinate = TypeVar("Coordinate", int, float)

# Box[int] where the corners index arrays (mask bounds, crops); Box[float] where they keep a request's sub-pixels.
Box = tuple[Coordinate, Coordinate, Coordinate, Coordinate]
