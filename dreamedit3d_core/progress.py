"""The progress/interrupt protocol every long loop of the library reports to.

The library never imports ComfyUI: a node passes an object implementing :class:`Progress` whose
``check_interrupt`` raises the host's own interruption exception.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable


@runtime_checkable
class Progress(Protocol):
    def update(self, step: int, total: int, preview: Optional[Any] = None, **info: Any) -> None:
        """Report that ``step`` of ``total`` is done; ``preview`` is an optional image, ``info`` loss values etc."""

    def check_interrupt(self) -> None:
        """Raise if the user asked to stop. Called at least once per step."""


class NullProgress:
    """Reports nowhere and never interrupts."""

    def update(self, step: int, total: int, preview: Optional[Any] = None, **info: Any) -> None:
        return None

    def check_interrupt(self) -> None:
        return None


class CallbackProgress:
    """Adapts plain callables (``on_update(step, total, preview, info)``, ``should_stop() -> bool``)."""

    def __init__(self, on_update=None, should_stop=None):
        self._on_update = on_update
        self._should_stop = should_stop

    def update(self, step: int, total: int, preview: Optional[Any] = None, **info: Any) -> None:
        if self._on_update is not None:
            self._on_update(step, total, preview, info)

    def check_interrupt(self) -> None:
        from .errors import Interrupted

        if self._should_stop is not None and self._should_stop():
            raise Interrupted("stopped on request")


class ConsoleProgress:
    """The library's default training progress: a tqdm bar on stderr with the loss, it/s and the ETA."""

    def __init__(self, description: str = "training"):
        self.description = description
        self._bar = None

    def update(self, step: int, total: int, preview: Optional[Any] = None, **info: Any) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=step - 1, desc=self.description, unit="step", dynamic_ncols=True)
        self._bar.update(step - self._bar.n)
        if "loss" in info:
            self._bar.set_postfix(loss=f"{info['loss']:.4g}", refresh=False)

    def check_interrupt(self) -> None:
        return None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def as_progress(progress: Optional[Progress]) -> Progress:
    return NullProgress() if progress is None else progress
