"""Silence library warnings that say nothing to a user of this package.

transformers warns once per image-processor class that torchvision is missing and that it falls back to the PIL
implementation. This package never uses transformers' image processors for scoring (verifiers preprocess tensors
themselves, differentiably) and torchvision cannot be installed beside every torch build, so the warning is noise on
every run. Only that message is dropped; every other transformers warning still shows.
"""

from __future__ import annotations

import logging

#: Loggers that emit the fallback message, and the text that identifies it.
_TORCHVISION_FALLBACK = ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to")


class _DropMessage(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def silence_irrelevant_warnings() -> None:
    """Install the filters (idempotent; before or after transformers is imported)."""
    name, fragment = _TORCHVISION_FALLBACK
    logger = logging.getLogger(name)
    if not any(isinstance(f, _DropMessage) and f.fragment == fragment for f in logger.filters):
        logger.addFilter(_DropMessage(fragment))


silence_irrelevant_warnings()
