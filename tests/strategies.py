"""Hypothesis strategies that honour msgspec's constraints, so generated messages are exactly
the ones a well-behaved peer could send (hypothesis' own `builds` ignores Meta ranges)."""

from __future__ import annotations

from typing import Any

import msgspec.inspect as mi
from hypothesis import strategies as st

_INT64 = 2**63 - 1


def _bound(low: Any, high: Any, default_low: int, default_high: int) -> tuple[int, int]:
    return (default_low if low is None else low, default_high if high is None else high)


def from_type_info(info: mi.Type) -> st.SearchStrategy[Any]:
    if isinstance(info, mi.StructType):
        fields = {f.name: from_type_info(f.type) for f in info.fields}
        return st.fixed_dictionaries(fields).map(lambda values: info.cls(**values))
    if isinstance(info, mi.IntType):
        low, high = _bound(info.ge, info.le, -_INT64, _INT64)
        return st.integers(low, high)
    if isinstance(info, mi.FloatType):
        low, high = _bound(info.ge, info.le, -1e9, 1e9)
        return st.floats(low, high, allow_nan=False)
    if isinstance(info, mi.StrType):
        return st.text(min_size=info.min_length or 0, max_size=min(info.max_length or 20, 20))
    if isinstance(info, mi.BytesType):
        return st.binary(max_size=64)
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.ListType):
        return st.lists(
            from_type_info(info.item_type),
            min_size=info.min_length or 0,
            max_size=min(info.max_length or 4, 4),
        )
    if isinstance(info, mi.UnionType):
        return st.one_of([from_type_info(t) for t in info.types])
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.EnumType):
        return st.sampled_from(list(info.cls))
    raise NotImplementedError(f"no strategy for {info!r}")


def messages(message_type: type) -> st.SearchStrategy[Any]:
    return from_type_info(mi.type_info(message_type))
