"""The one exception the imaging layer raises for input it cannot turn into a radiograph."""

MAX_REASON = 300


def one_line(text: str) -> str:
    """Printable characters on one line, capped: reasons quote values read from hostile files
    (a mutated UID can hold control bytes and newlines), and go into logs, reports and the UI."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())[:MAX_REASON]


class ImageRejected(Exception):
    """A file that cannot become a radiograph; ``reason`` is one line a person can act on.

    ``code`` is a short stable key (``not_image``, ``no_pixel_data``, ``truncated``,
    ``unsupported_transfer_syntax``, ``too_large``, ``decode_failed``, ...) so that reports and
    the database can be filtered by it.
    """

    def __init__(self, code: str, reason: str):
        reason = one_line(reason)
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
