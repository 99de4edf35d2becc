"""The value rules added in fingerprint spec v2 (issue 9): each left out something a result
depends on, so two calls that a function tells apart shared a key."""

from __future__ import annotations

import collections
import dataclasses
import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from afml_cache import robust_cacheable

pa = pytest.importorskip("pyarrow")
pytz = pytest.importorskip("pytz")

NEW_YORK = pytz.timezone("America/New_York")


def edt_and_est() -> tuple[datetime.datetime, datetime.datetime]:
    """01:30 on 2021-11-07 in New York, once in daylight time and once in standard time."""
    wall = datetime.datetime(2021, 11, 7, 1, 30)
    return NEW_YORK.localize(wall, is_dst=True), NEW_YORK.localize(wall, is_dst=False)


def calendars() -> tuple[pd.offsets.CustomBusinessDay, pd.offsets.CustomBusinessDay]:
    return pd.offsets.CustomBusinessDay(), pd.offsets.CustomBusinessDay(holidays=["2024-01-03"])


# --------------------------------------------------------------------------- time zones


def test_pytz_datetimes_an_hour_apart_differ(distinct, same):
    edt, est = edt_and_est()
    assert edt.utcoffset() != est.utcoffset()
    distinct([edt, est])
    same([edt, NEW_YORK.localize(datetime.datetime(2021, 11, 7, 1, 30), is_dst=True)])


def test_pytz_times_with_other_offsets_differ(distinct):
    edt, est = edt_and_est()
    distinct([datetime.time(1, 30, tzinfo=edt.tzinfo), datetime.time(1, 30, tzinfo=est.tzinfo)])


def test_fixed_offset_timezones_with_one_name_differ_in_frames(distinct):
    utc = pd.DatetimeIndex(["2024-01-01T00:00Z"])
    plus_one = datetime.timezone(datetime.timedelta(hours=1), "desk")
    plus_two = datetime.timezone(datetime.timedelta(hours=2), "desk")
    one, two = utc.tz_convert(plus_one), utc.tz_convert(plus_two)
    assert str(one.dtype) == str(two.dtype) and list(one.hour) != list(two.hour)
    distinct([one, two])
    distinct([pd.Series(one), pd.Series(two)])
    distinct([plus_one, plus_two])


def test_a_cached_pytz_datetime_keeps_its_instant(cache_dir: Path) -> None:
    @robust_cacheable
    def epoch_seconds(when: datetime.datetime) -> float:
        return when.timestamp()

    edt, est = edt_and_est()
    assert epoch_seconds(edt) == edt.timestamp()
    assert epoch_seconds(est) == est.timestamp()


# --------------------------------------------------------------------------- offsets


def test_custom_business_days_count_holidays_and_weekmask(distinct, same):
    plain, holiday = calendars()
    four_day = pd.offsets.CustomBusinessDay(weekmask="Mon Tue Wed Thu")
    from_calendar = pd.offsets.CustomBusinessDay(
        calendar=np.busdaycalendar(holidays=["2024-01-04"])
    )
    distinct([plain, holiday, four_day, from_calendar])
    same([holiday, pd.offsets.CustomBusinessDay(holidays=["2024-01-03"])])


def test_index_freq_counts_the_offsets_definition(distinct):
    plain, holiday = calendars()
    indexes = [
        pd.date_range("2024-01-01", periods=2, freq=plain),
        pd.date_range("2024-01-01", periods=2, freq=holiday),
        pd.date_range("2024-01-01 10:00", periods=2, freq=pd.offsets.BusinessHour()),
        pd.date_range("2024-01-01 10:00", periods=2, freq=pd.offsets.BusinessHour(end="18:00")),
    ]
    assert indexes[0].freqstr == indexes[1].freqstr
    assert list(indexes[0]) == list(indexes[1]) and list(indexes[2]) == list(indexes[3])
    distinct(indexes)


def test_a_cached_shift_follows_the_calendar(cache_dir: Path) -> None:
    @robust_cacheable
    def shifted(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
        return index.shift(5)

    for calendar in calendars():
        index = pd.date_range("2024-01-01", periods=2, freq=calendar)
        pd.testing.assert_index_equal(shifted(index), index.shift(5))


# --------------------------------------------------------------------------- dict order


def test_dict_insertion_order_counts(distinct, same):
    distinct([{"ret": 1, "vol": 2}, {"vol": 2, "ret": 1}])
    same([{"ret": 1, "vol": 2}, dict([("ret", 1), ("vol", 2)])])


def test_a_cached_frame_keeps_the_dicts_column_order(cache_dir: Path) -> None:
    @robust_cacheable
    def feature_matrix(features: dict[str, list[float]]) -> pd.DataFrame:
        return pd.DataFrame(features)

    ret, vol = [0.1, 0.2], [1.0, 2.0]
    for features in ({"ret": ret, "vol": vol}, {"vol": vol, "ret": ret}):
        pd.testing.assert_frame_equal(feature_matrix(features), pd.DataFrame(features))


def test_a_cached_call_keeps_the_order_of_its_keyword_arguments(cache_dir: Path) -> None:
    @robust_cacheable
    def columns(**features: float) -> list[str]:
        return list(features)

    assert columns(ret=1.0, vol=2.0) == ["ret", "vol"]
    assert columns(vol=2.0, ret=1.0) == ["vol", "ret"]


# --------------------------------------------------------------------------- Arrow


def dictionary(keys: list[int], values: list[str], ordered: bool = False) -> Any:
    return pa.DictionaryArray.from_arrays(pa.array(keys, pa.int32()), values, ordered=ordered)


def test_arrow_dictionaries_count_order_unused_entries_and_the_ordered_flag(distinct):
    arrays = [
        dictionary([0, 1, 0], ["x", "y"]),
        dictionary([1, 0, 1], ["y", "x"]),
        dictionary([0, 1, 0], ["x", "y", "z"]),
        dictionary([0, 1, 0], ["x", "y"], ordered=True),
    ]
    assert len({str(a.to_pylist()) for a in arrays}) == 1
    distinct(arrays)
    distinct([pa.table({"c": a}) for a in arrays])


def test_arrow_dictionary_slices_still_hash_like_the_whole_array(same):
    whole = dictionary([0, 1, 0, 2], ["x", "y", "z"])
    same([pa.chunked_array([whole]), pa.chunked_array([whole.slice(0, 1), whole.slice(1, 3)])])


def test_arrow_dictionaries_nested_in_lists_and_structs_count(distinct):
    values = pa.array(["x", "y"]).dictionary_encode()
    other = dictionary([1, 0], ["y", "x"])
    assert values.to_pylist() == other.to_pylist()
    lists = [pa.ListArray.from_arrays(pa.array([0, 2], pa.int32()), d) for d in (values, other)]
    distinct(lists)
    distinct([pa.StructArray.from_arrays([d], names=["c"]) for d in (values, other)])


def test_a_cached_arrow_category_list_follows_the_dictionary(cache_dir: Path) -> None:
    @robust_cacheable
    def categories(column: Any) -> list[str]:
        return list(column.to_pandas().cat.categories)

    for values in (["x", "y"], ["y", "x"], ["x", "y", "z"]):
        column = dictionary([values.index("x"), values.index("y")], values)
        assert categories(column) == values


def test_arrow_field_and_schema_metadata_count(distinct):
    long = "x" * 200
    distinct(
        [
            pa.field("a", pa.int64(), metadata={"unit": "usd"}),
            pa.field("a", pa.int64(), metadata={"unit": "eur"}),
            pa.field("a", pa.int64()),
        ]
    )
    distinct(
        [
            pa.schema([("a", pa.int64())], metadata={"note": long + "1"}),
            pa.schema([("a", pa.int64())], metadata={"note": long + "2"}),
        ]
    )
    nested = [
        pa.struct([pa.field("a", pa.int64(), metadata={"unit": unit})]) for unit in ("usd", "eur")
    ]
    distinct(nested)


def test_arrow_time64_nanosecond_scalars_differ(distinct):
    distinct([pa.scalar(1, pa.time64("ns")), pa.scalar(2, pa.time64("ns"))])
    distinct([pa.scalar(1, pa.int64()), pa.scalar(1, pa.int32()), pa.scalar(None, pa.int64())])


# --------------------------------------------------------------------------- numpy


def test_masked_arrays_count_fill_value_and_hard_mask(distinct):
    base = np.ma.array([1.0, 2.0], mask=[False, True])
    filled = np.ma.array([1.0, 2.0], mask=[False, True], fill_value=-1.0)
    hard = np.ma.array([1.0, 2.0], mask=[False, True], hard_mask=True)
    distinct([base, filled, hard])


class Tagged(np.ndarray):
    """An ndarray subclass carrying an attribute (numpy's documented InfoArray pattern)."""

    def __new__(cls, values: Any, info: str) -> Tagged:
        obj = np.asarray(values).view(cls)
        obj.info = info
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.info = getattr(obj, "info", None)


def test_ndarray_subclass_attributes_count(distinct, same):
    distinct([Tagged([1, 2], "usd"), Tagged([1, 2], "eur")])
    same([Tagged([1, 2], "usd"), Tagged([1, 2], "usd")])


def test_memmaps_count_by_content_not_by_file(tmp_path: Path, same):
    maps = []
    for name in ("a.dat", "b.dat"):
        m = np.memmap(tmp_path / name, dtype="f8", mode="w+", shape=(3,))
        m[:] = [1.0, 2.0, 3.0]
        maps.append(m)
    same(maps)


# --------------------------------------------------------------------------- Python objects


@dataclasses.dataclass
class Config:
    window: int


def test_dataclass_attributes_outside_fields_count(distinct):
    plain, tagged = Config(20), Config(20)
    tagged.scale = 2.0  # type: ignore[attr-defined]
    distinct([plain, tagged])


class Symbol(str):
    __slots__ = ("exchange",)


class Bars(list):
    __slots__ = ("freq",)


def test_slots_of_builtin_subclasses_count(distinct):
    a, b = Symbol("ES"), Symbol("ES")
    a.exchange, b.exchange = "CME", "ICE"
    distinct([a, b])
    x, y = Bars([1]), Bars([1])
    x.freq, y.freq = "1min", "5min"
    distinct([x, y])


class Counts(collections.defaultdict):
    pass


def test_defaultdict_subclass_counts_its_factory(distinct):
    distinct([Counts(int, a=1), Counts(float, a=1)])


def test_frame_flags_count(distinct):
    frame = pd.DataFrame({"a": [1, 2]})
    strict = frame.set_flags(allows_duplicate_labels=False)
    distinct([frame, strict])
    distinct([frame["a"], frame["a"].set_flags(allows_duplicate_labels=False)])
