"""The one exception the imaging layer raises for input it cannot turn into a radiograph."""


class ImageRejected(Exception):
    """A file that cannot become a radiograph; ``reason`` is one line a person can act on.

    ``code`` is a short stable key (``not_image``, ``no_pixel_data``, ``truncated``,
    ``unsupported_transfer_syntax``, ``too_large``, ``unsupported_photometric``, ...) so that
    reports and the database can be filtered by it.
    """

    def __init__(self, code: str, reason: str):
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
