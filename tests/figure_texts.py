"""What a drawn matplotlib figure says: its text artists, read back for assertions."""

from __future__ import annotations

from matplotlib.colors import to_hex
from matplotlib.text import Text


def prediction_texts(figure) -> list[tuple[str, str]]:
    """(text, colour as #rrggbb) of every 'true X / pred Y' label in the figure, in drawing order."""
    return [(text.get_text(), to_hex(text.get_color())) for text in figure.findobj(Text) if text.get_text().startswith("true ")]


def expected_labels(classes, true, predicted) -> list[tuple[str, str]]:
    """The labels a panel must show for these images: 'true happy / pred sad', green where the
    prediction is right, red where wrong (written out here, not taken from the code under test)."""
    return [
        (f"true {classes[int(t)]} / pred {classes[int(p)]}", to_hex("tab:green" if int(t) == int(p) else "tab:red"))
        for t, p in zip(true, predicted)
    ]
