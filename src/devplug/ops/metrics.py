"""A minimal Prometheus registry rendering the text exposition format 0.0.4.

Counters, gauges and fixed-bucket histograms with labels, plus gauges computed at scrape
time (so state such as the inventory costs nothing until someone asks). Updating a series
is a dict lookup and an addition: cheap enough for the uevent path. Everything runs on the
trio thread; nothing here locks.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Union

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

Number = Union[int, float]
LabelValues = tuple[str, ...]


def format_value(value: Number) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{escape_label(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Family:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str]) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bad metric name {name!r}")
        for label in labels:
            if not _LABEL.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"bad label name {label!r}")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)

    def _key(self, values: tuple[str, ...], kw: dict[str, str]) -> LabelValues:
        if not kw and len(values) == len(self.label_names):
            return values  # the hot path; values are made str when rendered
        if kw:
            if values:
                raise TypeError("pass label values positionally or by name, not both")
            try:
                values = tuple(str(kw.pop(n)) for n in self.label_names)
            except KeyError as exc:
                raise ValueError(f"{self.name}: missing label {exc.args[0]}") from None
            if kw:
                raise ValueError(f"{self.name}: unknown labels {sorted(kw)}")
        else:
            raise ValueError(f"{self.name}: expected labels {self.label_names}, got {values}")
        return values

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> list[str]:
        return self.header() + list(self.samples())


class _Value(_Family):
    """Counter or gauge: one number per label set."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, Number] = {} if labels else {(): 0}

    def get(self, *values: str, **kw: str) -> Number:
        return self._values.get(self._key(values, kw), 0)

    def _add(self, key: LabelValues, amount: Number) -> None:
        self._values[key] = self._values.get(key, 0) + amount

    def samples(self) -> Iterable[str]:
        for key in sorted(self._values):
            yield f"{self.name}{_labels(self.label_names, key)} {format_value(self._values[key])}"


class Counter(_Value):
    kind = "counter"

    def inc(self, *values: str, amount: Number = 1, **kw: str) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        key = self._key(values, kw)
        self._values[key] = self._values.get(key, 0) + amount

    def touch(self, *values: str, **kw: str) -> None:
        """Make a label set visible at 0 (so rate() works from the first increment)."""
        self._values.setdefault(self._key(values, kw), 0)


class Gauge(_Value):
    kind = "gauge"

    def set(self, value: Number, *values: str, **kw: str) -> None:
        self._values[self._key(values, kw)] = value

    def inc(self, *values: str, amount: Number = 1, **kw: str) -> None:
        self._add(self._key(values, kw), amount)


class _Func(_Family):
    """Samples a function computes at scrape time: ``fn() -> [(label values, value)]``."""

    def __init__(self, name: str, help: str, labels: Sequence[str],
                 fn: Callable[[], Iterable[tuple[LabelValues, Number]]]) -> None:
        super().__init__(name, help, labels)
        self._fn = fn

    def samples(self) -> Iterable[str]:
        for key, value in sorted(self._fn()):
            if len(key) != len(self.label_names):
                raise ValueError(f"{self.name}: expected labels {self.label_names}, got {key}")
            yield f"{self.name}{_labels(self.label_names, key)} {format_value(value)}"


class GaugeFunc(_Func):
    kind = "gauge"


class CounterFunc(_Func):
    """A counter kept elsewhere (e.g. by the udev source), read at scrape time."""

    kind = "counter"


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and distinct")
        self.bounds = tuple(bounds)
        # per label set: [count per bucket (+Inf last), sum]
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}
        if not labels:
            self._child(())

    def _child(self, key: LabelValues) -> tuple[list[int], list[float]]:
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = ([0] * (len(self.bounds) + 1), [0.0])
        return s

    def observe(self, value: float, *values: str, **kw: str) -> None:
        counts, total = self._child(self._key(values, kw))
        counts[bisect.bisect_left(self.bounds, value)] += 1  # le is inclusive
        total[0] += value

    def count(self, *values: str, **kw: str) -> int:
        s = self._series.get(self._key(values, kw))
        return sum(s[0]) if s else 0

    def samples(self) -> Iterable[str]:
        names = self.label_names
        for key in sorted(self._series):
            counts, total = self._series[key]
            cumulative = 0
            for bound, n in zip((*self.bounds, math.inf), counts):
                cumulative += n
                le = f'le="{format_bound(bound)}"'
                yield f"{self.name}_bucket{_labels(names, key, le)} {cumulative}"
            yield f"{self.name}_sum{_labels(names, key)} {format_value(total[0])}"
            yield f"{self.name}_count{_labels(names, key)} {cumulative}"


def format_bound(bound: float) -> str:
    """Bucket bounds as Prometheus' Go client writes them (``1.0``, ``0.0001``, ``+Inf``)."""
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


class Registry:
    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _add(self, family: _Family) -> _Family:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} registered twice")
        self._families[family.name] = family
        return family

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labels: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labels))  # type: ignore[return-value]

    def gauge_func(self, name: str, help: str, labels: Sequence[str],
                   fn: Callable[[], Iterable[tuple[LabelValues, Number]]]) -> GaugeFunc:
        return self._add(GaugeFunc(name, help, labels, fn))  # type: ignore[return-value]

    def counter_func(self, name: str, help: str, labels: Sequence[str],
                     fn: Callable[[], Iterable[tuple[LabelValues, Number]]]) -> CounterFunc:
        return self._add(CounterFunc(name, help, labels, fn))  # type: ignore[return-value]

    def histogram(self, name: str, help: str, buckets: Sequence[float], labels: Sequence[str] = ()) -> Histogram:
        return self._add(Histogram(name, help, buckets, labels))  # type: ignore[return-value]

    def render(self) -> str:
        lines: list[str] = []
        for family in self._families.values():
            lines += family.render()
        return "\n".join(lines) + "\n"
