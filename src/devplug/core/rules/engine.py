"""The rule set: evaluates device rules against one device, HOSTPATH rules against one path.

Evaluation is udev's: rules run in file order, a rule matches when all its keys do, its
assignments then apply at once (``ENV{}=`` is visible to later rules' ``ENV{}`` matches),
later assignments override earlier ones unless one was made final with ``:=``, and
``GOTO`` skips forward to its ``LABEL``. Pure: attribute reads go through the device's
reader, file tests through the caller's ``path_mode``.

Speed: every rule carries a necessary literal condition where it has one (``SUBSYSTEM==``,
``ATTRS{idVendor}==`` …); per device the engine looks its values up once and only runs
the rules that can still match, in order.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from typing import Optional, Union

from ..device import Device, PathMode
from . import escape
from .evaluation import ENV_VALUE_MAX_BYTES, Evaluation
from .host import as_host
from .matchers import PARENT_KEYS, ParentGroup, attr_value
from .model import DEFAULT_DOMAIN, DEFAULT_PERMISSIONS, Claim, Mount, RuleError, RuleRef, RuleTrace
from .rule import Assign, Rule
from .validate import full_resource


class _Claim:
    """Accumulates assignments with udev's override / final (``:=``) rules.

    What a container gets (``CONTAINER_PATH``, ``MOUNT``, ``CONTAINER_ENV``, ``ANNOTATION``)
    is expanded by ``escape``: a path that cannot be made safe for this device is kept as
    a :class:`RuleError` in its slot, so a later assignment can still override it, and the
    errors left at the end refuse the device (``Claim.errors``).
    """

    def __init__(self) -> None:
        self.values: dict[str, Optional[str]] = {}
        self.errors: dict[str, tuple[RuleError, RuleRef]] = {}  # slot -> why its value is unusable
        self.mount_errors: list[tuple[RuleError, RuleRef]] = []
        self.final: set[str] = set()
        self.mounts: list[Mount] = []
        self.envs: dict[str, str] = {}
        self.annotations: dict[str, str] = {}
        self.options: set[str] = set()
        self.rule: Optional[RuleRef] = None
        self.matched: list[RuleRef] = []

    def apply(self, a: Assign, ev: Evaluation, ref: RuleRef) -> None:
        key = a.key
        if key == "ENV":
            name = a.name
            assert name is not None
            if not a.value:
                if a.op != "+=":
                    ev.overlay[name] = None
                return
            value = a.templates[0].expand(ev.device, ev.parent(), ev.env)
            if a.op == "+=":
                old = ev.env(name)
                if old is not None:
                    value = f"{old} {value}"
            if len(value) > ENV_VALUE_MAX_BYTES // 4 and \
                    len(value.encode("utf-8", "surrogateescape")) > ENV_VALUE_MAX_BYTES:
                return  # udev refuses the assignment; the property keeps its value
            ev.overlay[name] = value
            return
        slot = key if a.name is None else f"{key}{{{a.name}}}"
        if slot in self.final:
            return
        if a.final:
            self.final.add(slot)
        if key in ("RESOURCE", "PERMISSIONS", "SHARE"):
            self.values[key] = a.value or None
            if key == "RESOURCE":
                self.rule = ref if a.value else None
        elif key == "DEVICE_ID":
            self.values[key] = a.templates[0].expand(ev.device, ev.parent(), ev.env) if a.value else None
        elif key == "CONTAINER_PATH":
            self.errors.pop(key, None)
            self.values[key] = None
            if a.value:
                try:
                    self.values[key] = escape.expand_path(a.templates[0], ev.device, ev.parent(), ev.env,
                                                          default_root=escape.CONTAINER_ROOT)
                except escape.SubstitutionError as exc:
                    self.errors[key] = (RuleError(ref.locate(a.text), f"CONTAINER_PATH: {exc}"), ref)
        elif key == "MOUNT":
            if a.op != "+=":
                self.mounts.clear()
                self.mount_errors.clear()
            if a.value:
                try:
                    host, container = (escape.expand_path(t, ev.device, ev.parent(), ev.env)
                                       for t in a.templates)
                except escape.SubstitutionError as exc:
                    self.mount_errors.append((RuleError(ref.locate(a.text), f"MOUNT: {exc}"), ref))
                else:
                    mount = Mount(host, container, a.read_only)
                    self.mounts[:] = [m for m in self.mounts if m.container_path != container] + [mount]
        elif key == "CONTAINER_ENV":
            self.envs[a.name] = escape.expand_value(a.templates[0], ev.device, ev.parent(), ev.env)  # type: ignore[index]
        elif key == "ANNOTATION":
            self.annotations[a.name] = escape.expand_value(a.templates[0], ev.device, ev.parent(), ev.env)  # type: ignore[index]
        elif key == "OPTIONS":
            if a.op == "-=":
                self.options -= a.options
            else:
                self.options |= a.options
        else:  # pragma: no cover - the parser knows every key
            raise AssertionError(key)

    def result(self, domain: str) -> Claim:
        resource = self.values.get("RESOURCE")
        failed = list(self.errors.values()) + self.mount_errors if resource else []
        return Claim(
            resource=full_resource(resource, domain) if resource else None,
            permissions=self.values.get("PERMISSIONS") or DEFAULT_PERMISSIONS,
            share=int(self.values.get("SHARE") or 1),
            device_id=self.values.get("DEVICE_ID"),
            container_path=self.values.get("CONTAINER_PATH"),
            mounts=tuple(self.mounts),
            envs=tuple(sorted(self.envs.items())),
            annotations=tuple(sorted(self.annotations.items())),
            options=frozenset(self.options),
            rule=self.rule if resource else None,
            matched=tuple(self.matched),
            errors=tuple(e for e, _ref in failed),
            error_rule=failed[0][1] if failed else None,
        )


def _chain_values(kind: tuple[str, Optional[str], bool], device: Device) -> set[str]:
    key, name, strip = kind
    if key in PARENT_KEYS:
        nodes: Iterable[Device] = device.chain()
    else:
        nodes = (device,)
    out: set[str] = set()
    for node in nodes:
        if key in ("SUBSYSTEM", "SUBSYSTEMS"):
            v = node.subsystem
        elif key in ("KERNEL", "KERNELS"):
            v = node.sysname
        elif key in ("DRIVER", "DRIVERS"):
            v = node.driver
        else:  # ATTR, ATTRS
            v = attr_value(node.read_attr(name), strip)  # type: ignore[arg-type]
        if v:
            out.add(v)
    return out


def _path_device(path: str) -> Device:
    """A stand-in device for HOSTPATH templates: ``%k`` is the basename, ``$devnode`` the path."""
    base = path.rstrip("/").rsplit("/", 1)[-1] or "/"
    return Device(devpath=path, sysname=base, devnode=path, sys_root="")


class RuleSet:
    """Loaded rules, ready to evaluate. Build with :func:`devplug.rules.load_rules`."""

    def __init__(self, files: Sequence[str], rules: Sequence[Rule]) -> None:
        self.files: tuple[str, ...] = tuple(files)
        self.rules: tuple[Rule, ...] = tuple(rules)
        self._device_rules = tuple(r for r in self.rules if not r.is_hostpath)
        self._hostpath_rules = tuple(r for r in self.rules if r.is_hostpath)
        # Each GOTO jumps to the first LABEL of that name after it in its file: one pass
        # backwards, remembering the nearest label of each name seen so far (linear).
        self._goto: dict[int, int] = {}
        nearest: dict[tuple[str, str], int] = {}
        for k in range(len(self._device_rules) - 1, -1, -1):
            r = self._device_rules[k]
            if r.goto is not None:
                target = nearest.get((r.ref.file, r.goto))
                if target is not None:
                    self._goto[k] = target
            if r.label is not None:
                nearest[(r.ref.file, r.label)] = k
        # udev never evaluates a line that neither assigns nor jumps (its line-type mask).
        self._inert = frozenset(k for k, r in enumerate(self._device_rules) if not r.assigns and r.goto is None)
        # Rules the index can skip although udev would reach their parent search (which then
        # fails and forgets $id): the index key is a parent key. With where that search sits.
        self._skippable: list[int] = []
        self._parent_at: dict[int, int] = {}
        for k, r in enumerate(self._device_rules):
            if r.index is not None and r.index.key in PARENT_KEYS and k not in self._inert:
                self._skippable.append(k)
                self._parent_at[k] = next(i for i, c in enumerate(r.checks) if isinstance(c, ParentGroup))
        self._always: list[int] = []
        # literal -> rule number, or a list of them when several rules share the literal
        self._index: dict[tuple[str, Optional[str], bool], dict[str, Union[int, list[int]]]] = {}
        for k, r in enumerate(self._device_rules):
            if k in self._inert:
                continue
            m = r.index
            if m is None:
                self._always.append(k)
                continue
            table = self._index.setdefault((m.key, m.name, m.strip), {})
            for v in m.pattern.literals:
                have = table.get(v)
                if have is None:
                    table[v] = k
                elif isinstance(have, int):
                    table[v] = [have, k]
                else:
                    have.append(k)

    # ---- static facts ------------------------------------------------------------------
    @property
    def subsystems(self) -> Optional[frozenset[str]]:
        """Subsystems a claiming rule can match (for a netlink filter), None when any could."""
        out: set[str] = set()
        for r in self._device_rules:
            if not r.claims:
                continue
            subs = r.subsystems
            if subs is None:
                return None
            out |= subs
        return frozenset(out)

    def mentions(self, word: str) -> bool:
        """Whether any device rule's text contains ``word`` (a property name, say)."""
        return any(word in r.ref.text for r in self._device_rules)

    def resources(self, domain: str = DEFAULT_DOMAIN) -> frozenset[str]:
        """Full names of every resource a rule can claim."""
        return frozenset(full_resource(a.value, domain) for r in self.rules for a in r.assigns
                          if a.key == "RESOURCE" and a.value)

    @property
    def hostpath_rules(self) -> tuple[Rule, ...]:
        return self._hostpath_rules

    def hostpath_patterns(self) -> tuple[str, ...]:
        out: list[str] = []
        for r in self._hostpath_rules:
            out.extend(p for p in r.hostpath if p not in out)
        return tuple(out)

    # ---- evaluation --------------------------------------------------------------------
    def _candidates(self, device: Device) -> set[int]:
        cands = set(self._always)
        if not self._index:
            return cands
        for kind, table in self._index.items():
            for v in _chain_values(kind, device):
                hit = table.get(v)
                if hit is None:
                    continue
                if isinstance(hit, int):
                    cands.add(hit)
                else:
                    cands.update(hit)  # a rule may be listed under several values of one chain
        return cands

    def _scanner(self, cands: set[int], jumps: list[tuple[int, int]]):
        """For :meth:`Evaluation.parent`: would udev have run (and failed) the parent search
        of a rule the index skipped in [first, end)? Only rules indexed by a parent key can
        be such a rule; the ones a GOTO jumped over never ran."""
        rules, skippable, parent_at = self._device_rules, self._skippable, self._parent_at

        def scan(first: int, end: int, ev: Evaluation) -> bool:
            device = ev.device
            for k in skippable[bisect.bisect_left(skippable, first):bisect.bisect_left(skippable, end)]:
                if k in cands or any(a <= k < b for a, b in jumps):
                    continue
                saved, ev.at = ev.at, k
                try:
                    if all(c.check(device, ev) for c in rules[k].checks[:parent_at[k]]):
                        return True
                finally:
                    ev.at = saved
            return False

        return scan

    def _run(self, device: Device, action: str, domain: str, path_mode: Optional[PathMode],
             trace: Optional[list[RuleTrace]]) -> Claim:
        rules = self._device_rules
        jumps: list[tuple[int, int]] = []
        if trace is not None:
            order: Iterable[int] = range(len(rules))
            ev = Evaluation(device, action, as_host(path_mode))
        else:
            cands = self._candidates(device)
            order = sorted(cands)
            ev = Evaluation(device, action, as_host(path_mode), self._scanner(cands, jumps) if self._skippable else None)
        acc = _Claim()
        inert = self._inert
        skip_to = 0
        skipped_by: Optional[Rule] = None
        for k in order:
            rule = rules[k]
            if k < skip_to:
                if trace is not None and not rule.is_label_only:
                    trace.append(RuleTrace(rule.ref, False, f"skipped by GOTO=\"{skipped_by.goto}\" at {skipped_by.ref}"))  # type: ignore[union-attr]
                continue
            if k in inert:
                continue
            ev.at = k
            ok = True
            for check in rule.checks:
                if not check.check(device, ev):
                    ok = False
                    if trace is not None:
                        trace.append(RuleTrace(rule.ref, False, check.explain(device, ev)))
                    break
            if not ok:
                continue
            if rule.is_label_only:
                continue
            acc.matched.append(rule.ref)
            if trace is not None:
                trace.append(RuleTrace(rule.ref, True, ""))
            if any(a.key == "ENV" for a in rule.assigns):
                ev.parent()  # settle skipped rules' parent searches against the ENV they saw
            for a in rule.assigns:
                acc.apply(a, ev, rule.ref)
            target = self._goto.get(k)
            if target is not None:
                skip_to, skipped_by = target, rule
                jumps.append((k + 1, target))
        return acc.result(domain)

    def evaluate(self, device: Device, *, action: str = "add", domain: str = DEFAULT_DOMAIN,
                 path_mode: Optional[PathMode] = None) -> Claim:
        """The claim of all rules on ``device``; ``resource`` is None when none claims it.

        ``path_mode`` backs ``TEST{}``; without it every TEST key fails. A
        :class:`~.host.Host` passed as ``path_mode`` also answers ``SYSCTL{}``, ``CONST{}``
        and ``[subsystem/sysname]`` keys.
        """
        return self._run(device, action, domain, path_mode, None)

    def explain(self, device: Device, *, action: str = "add", domain: str = DEFAULT_DOMAIN,
                path_mode: Optional[PathMode] = None) -> list[RuleTrace]:
        """For every device rule, in order: did it match, and if not, which key failed."""
        trace: list[RuleTrace] = []
        self._run(device, action, domain, path_mode, trace)
        return trace

    def evaluate_path(self, path: str, *, domain: str = DEFAULT_DOMAIN,
                      path_mode: Optional[PathMode] = None) -> Claim:
        """HOSTPATH rules against one host path (templates: ``%k`` basename, ``$devnode`` path)."""
        dev = _path_device(path)
        ev = Evaluation(dev, "add", as_host(path_mode))
        acc = _Claim()
        for rule in self._hostpath_rules:
            if any(p.matches(path) for p in rule.hostpath_patterns):
                acc.matched.append(rule.ref)
                for a in rule.assigns:
                    acc.apply(a, ev, rule.ref)
        return acc.result(domain)

    def __repr__(self) -> str:
        return f"RuleSet({len(self.rules)} rules in {len(self.files)} files)"
