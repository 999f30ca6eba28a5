"""A strict parser for the Prometheus text exposition format 0.0.4, for tests.

Stricter than Prometheus itself where devplug must be exact: every family has HELP and TYPE
before its samples, samples of a family are contiguous, no series repeats, label values use
only the three escapes, histograms have increasing ``le`` ending at ``+Inf`` with cumulative
counts equal to ``_count``.
"""

from __future__ import annotations

import math
import re

import attrs

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{.*\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


class FormatError(AssertionError):
    pass


@attrs.define
class Family:
    name: str
    type: str = ""
    help: str | None = None
    samples: list[tuple[str, dict[str, str], float]] = attrs.field(factory=list)

    def value(self, **labels: str) -> float:
        hits = [v for n, ls, v in self.samples if n == self.name and ls == labels]
        if len(hits) != 1:
            raise KeyError(f"{self.name}{labels}: {len(hits)} samples")
        return hits[0]

    def sample(self, name: str, **labels: str) -> float:
        hits = [v for n, ls, v in self.samples if n == name and ls == labels]
        if len(hits) != 1:
            raise KeyError(f"{name}{labels}: {len(hits)} samples")
        return hits[0]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"\\": "\\", '"': '"', "n": "\n"}[m.group(1)], value)


def _value(text: str) -> float:
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", text):
        raise FormatError(f"bad value {text!r}")
    return float(text)


def _labels(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    inner = text[1:-1]
    out: dict[str, str] = {}
    pos = 0
    while pos < len(inner):
        m = _LABEL.match(inner, pos)
        if not m:
            raise FormatError(f"bad labels {text!r} at {pos}")
        if m.group(1) in out:
            raise FormatError(f"label {m.group(1)} repeated in {text!r}")
        out[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return out


def _family_of(sample: str, families: dict[str, Family]) -> Family:
    if sample in families and families[sample].type != "histogram":
        return families[sample]
    for suffix in ("_bucket", "_sum", "_count"):
        base = sample[: -len(suffix)]
        if sample.endswith(suffix) and base in families and families[base].type == "histogram":
            return families[base]
    raise FormatError(f"sample {sample} has no TYPE declared before it")


def parse(text: str) -> dict[str, Family]:
    if not text.endswith("\n"):
        raise FormatError("exposition must end with a newline")
    families: dict[str, Family] = {}
    finished: set[str] = set()
    current: Family | None = None
    seen: set[tuple[str, tuple]] = set()
    for lineno, line in enumerate(text[:-1].split("\n"), 1):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            kind, name, _, rest = line[2:6], *line[7:].partition(" ")
            if not re.fullmatch(_NAME, name):
                raise FormatError(f"{lineno}: bad name {name!r}")
            if name in finished:
                raise FormatError(f"{lineno}: {name} declared again after its samples")
            fam = families.setdefault(name, Family(name))
            if kind == "HELP":
                if fam.help is not None or not re.fullmatch(r"(?:[^\\]|\\[\\n])*", rest):
                    raise FormatError(f"{lineno}: bad or repeated HELP")
                fam.help = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else "\\", rest)
            else:
                if fam.type or rest not in _TYPES or fam.samples:
                    raise FormatError(f"{lineno}: bad or late TYPE {rest!r}")
                fam.type = rest
            if current is not None and current is not fam:
                finished.add(current.name)
            current = fam
            continue
        if line.startswith("#") or not line:
            raise FormatError(f"{lineno}: unexpected line {line!r}")
        m = _SAMPLE.match(line)
        if not m:
            raise FormatError(f"{lineno}: bad sample {line!r}")
        name, labels, value = m.group(1), _labels(m.group(2)), _value(m.group(3))
        fam = _family_of(name, families)
        if fam is not current:
            raise FormatError(f"{lineno}: samples of {fam.name} are not contiguous")
        if fam.help is None:
            raise FormatError(f"{lineno}: {fam.name} has no HELP")
        key = (name, tuple(sorted(labels.items())))
        if key in seen:
            raise FormatError(f"{lineno}: duplicate series {line!r}")
        seen.add(key)
        fam.samples.append((name, labels, value))
    for fam in families.values():
        if not fam.type:
            raise FormatError(f"{fam.name}: no TYPE")
        if fam.type == "histogram":
            _check_histogram(fam)
        if fam.type == "counter" and any(v < 0 or math.isnan(v) for _n, _l, v in fam.samples):
            raise FormatError(f"{fam.name}: negative counter")
    return families


def _check_histogram(fam: Family) -> None:
    series: dict[tuple, list[tuple[float, float]]] = {}
    counts: dict[tuple, float] = {}
    sums: set[tuple] = set()
    for name, labels, value in fam.samples:
        if name == fam.name + "_bucket":
            if "le" not in labels:
                raise FormatError(f"{name} without le")
            rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            series.setdefault(rest, []).append((_value(labels["le"]), value))
        elif name == fam.name + "_count":
            counts[tuple(sorted(labels.items()))] = value
        else:
            sums.add(tuple(sorted(labels.items())))
    for rest, buckets in series.items():
        bounds = [b for b, _ in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds) or bounds[-1] != math.inf:
            raise FormatError(f"{fam.name}{rest}: le must increase and end with +Inf")
        values = [v for _, v in buckets]
        if values != sorted(values):
            raise FormatError(f"{fam.name}{rest}: buckets not cumulative")
        if rest not in counts or counts[rest] != values[-1] or rest not in sums:
            raise FormatError(f"{fam.name}{rest}: _count/_sum missing or != +Inf bucket")
