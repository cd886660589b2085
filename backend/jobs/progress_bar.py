"""A terminal progress bar fed by a job's progress callback (``samx`` commands, ``samx demo``)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(desc: str, unit: str = "step") -> Iterator[Callable[[int, int | None, str | None], None]]:
    with tqdm(desc=desc, unit=unit, disable=None) as bar:
        def on_progress(done: int, total: int | None, msg: str | None) -> None:
            if total is not None and bar.total != total:
                bar.total = total
            if msg:
                bar.set_postfix_str(msg[:60], refresh=False)
            bar.update(done - bar.n)

        yield on_progress
