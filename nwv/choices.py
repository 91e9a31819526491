"""`Choice`: a string enum parsed from a member or a case-insensitive name.

    >>> class Mode(Choice):
    ...     JOINT = "joint"
    >>> Mode.parse("JOINT") is Mode.JOINT
    True

A subclass names what it chooses with `_label` (used in the error message).
"""
from __future__ import annotations

import enum


class Choice(str, enum.Enum):
    """Base of the option enums (matching method, Fisher definition, optimisation mode)."""

    @classmethod
    def _label(cls) -> str:
        return "value"

    @classmethod
    def parse(cls, value):
        """The member for `value` (a member or its case-insensitive name).

        Raises:
          ValueError: "expected a <label> in [...], received ..." for anything else.
        """
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            raise ValueError(f"expected a {cls._label()} in {[m.value for m in cls]}, "
                             f"received {value!r}") from None
