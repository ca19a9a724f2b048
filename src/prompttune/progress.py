"""Progress bars for long work (tqdm: rate and ETA), and a silent stand-in when they are off."""

from __future__ import annotations


class _Silent:
    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...

    def set_postfix(self, **kw) -> None: ...


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "ex"):
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)
