"""`Choice`: a string enum parsed from a member or a case-insensitive name.

The base of every option enum of the library (MTZ pairing method, NWV matching
method, Fisher definition and source, optimisation mode), so all of them parse
and fail alike:

    >>> class Mode(Choice):
    ...     JOINT = "joint"
    >>> Mode.parse("JOINT") is Mode.JOINT
    True

A subclass names what it chooses with `_label` (used in the error message) and may
accept old spellings with `_aliases` ({alias: canonical value}).
"""
from __future__ import annotations

import enum


class Choice(str, enum.Enum):
    """Base of the option enums: `parse` accepts members, names in any case and aliases."""

    @classmethod
    def _label(cls) -> str:
        return "value"

    @classmethod
    def _aliases(cls) -> dict:
        return {}

    @classmethod
    def parse(cls, value):
        """The member for `value` (a member or its case-insensitive name).

        Args:
          value: a member, or its value in any letter case (or an alias).
        Returns:
          The member.
        Raises:
          ValueError: "expected a <label> in [...], received ..." for anything else.
        """
        if isinstance(value, cls):
            return value
        try:
            text = str(value).lower()
            return cls(cls._aliases().get(text, text))
        except ValueError:
            raise ValueError(f"expected a {cls._label()} in {[m.value for m in cls]}, "
                             f"received {value!r}") from None
