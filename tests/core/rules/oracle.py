"""Random udev rules built from this machine's real devices, for the udev oracle test.

Each generated rule is a list of match keys drawn from one source device (and its
ancestors): its kernel name, subsystem, driver, properties, attribute values, tags and
symlinks, mutated into globs, classes, alternatives, negations, empty patterns, trailing
whitespace, missing attributes, and parent-key combinations that hit one ancestor or
several. Values a rules file cannot quote (``"``, ``\\``, control characters) are skipped.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterator
from typing import Optional

from devplug.core.device import Device

# Attributes whose value changes by itself (counters, timers) cannot be compared across runs.
_VOLATILE_WORDS = ("time", "stat", "count", "bytes", "meminfo", "inflight", "jiffies", "energy", "temp",
                   "uevent", "seqnum", "random", "usage", "avail", "charge", "current_now", "power_now",
                   "pending", "latency", "load", "_now", "hwmon")
_SUBDIRS = ("power", "queue", "device")
_VOLATILE_PROPS = ("USEC_INITIALIZED",)
# udev builds these strings from hash sets whose iteration order is random per process, so
# udevd, ``udevadm test`` and libudev list several elements in different orders
# (":uaccess:seat:" vs ":seat:uaccess:"). With one element they are stable.
_SET_PROPS = {"TAGS": ":", "CURRENT_TAGS": ":", "DEVLINKS": " "}
_PLAIN_CHARS = set(map(chr, range(0x20, 0x7F))) - {'"', "\\"}
CONST_VALUES = ["x86-64", "arm64", "x86*", "?*", "", "*", "none", "docker", "kvm|qemu", "none|docker", "vm-other"]
# Stable kernel parameters (read by both sides during the test), in both spellings, and one that is missing.
SYSCTLS = [("kernel/ostype", "Linux"), ("kernel.ostype", "Linux"), ("net/ipv4/ip_forward", None),
           ("vm.swappiness", None), ("kernel/nonexistent_devplug", ""), ("fs/file-max", None)]
# (udevadm test 252 answers "/sys/bus/*/devices" and "/sys/*/mem" as absent although they
# exist; not understood yet, so not generated: see the README's list of differences.)
GLOB_TESTS = ["/sys/class/*/null", "/sys/class/*/nonexistent", "/sys/class/*/full", "/sys/class/*/tty0"]
# Value probes (classes 4 and 5): the remembered ancestor, and values near udev's 512-byte limit.
PROBES = ["$id", "$driver", "$id|$driver", "%k|%n", "$attr{{{a}}}", "$id|$driver|$attr{{{a}}}", "%s{{{a}}}"]


def quotable(value: str) -> bool:
    return all(c in _PLAIN_CHARS for c in value)


def attribute_names(dev: Device) -> list[str]:
    """Readable regular attributes of a device, plus link attributes and one level of subdirs."""
    names: list[str] = []
    try:
        entries = sorted(os.listdir(dev.syspath))
    except OSError:
        return names
    for n in entries:
        p = os.path.join(dev.syspath, n)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode):
            names.append(n)  # driver/subsystem give a basename; other links read as missing
        elif stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IRUSR:
            names.append(n)
        elif stat.S_ISDIR(st.st_mode) and n in _SUBDIRS:
            try:
                sub = sorted(os.listdir(p))[:12]
            except OSError:
                continue
            names.extend(f"{n}/{m}" for m in sub)
    return [n for n in names if not any(w in n for w in _VOLATILE_WORDS)]


class Generator:
    def __init__(self, devices: list[Device], seed: int) -> None:
        self.devices = devices
        self.rnd = random.Random(seed)
        self._attrs: dict[str, list[tuple[str, Optional[str]]]] = {}

    # ---- value sources -------------------------------------------------------------------
    def attrs_of(self, dev: Device) -> list[tuple[str, Optional[str]]]:
        if dev.devpath not in self._attrs:
            pairs = []
            for n in attribute_names(dev):
                v = dev.read_attr(n)
                if v is None or (quotable(v) and len(v) <= 120):
                    pairs.append((n, v))
            self._attrs[dev.devpath] = pairs
        return self._attrs[dev.devpath]

    def mutate(self, value: str) -> str:
        """A pattern derived from a real value: usually matching it, sometimes not."""
        r = self.rnd
        v = value
        choice = r.randrange(25)
        if not v:
            return r.choice(["", "?*", "*", "|x", "x", "x|", "[!a]*"])
        if choice <= 4:
            return v
        if choice == 5:
            return v[: r.randrange(len(v) + 1)] + "*"
        if choice == 6:
            return "*" + v[r.randrange(len(v)) :]
        if choice == 7:
            k = r.randrange(len(v))
            return v[:k] + "?" + v[k + 1 :]
        if choice == 8:
            k = r.randrange(len(v))
            c = v[k]
            cls = r.choice([f"[{c}]", f"[!{c}]", "[a-z]", "[0-9]", "[!0-9]", "[[:alpha:]]", "[[:digit:]]",
                            f"[^{c}]", "[]a]", "[a-]", f"[{c}-{c}]"])
            return v[:k] + cls + v[k + 1 :]
        if choice == 9:
            return r.choice(["nomatch", "x" + v]) + "|" + v
        if choice == 10:
            return "|" + v
        if choice == 11:
            return v + "|"
        if choice == 12:
            return v + " "
        if choice == 13:
            return v.upper() if v.upper() != v else v.lower()
        if choice == 14:
            return "?*"
        if choice == 15:
            return ""
        if choice == 16:
            return "*"
        if choice == 17:
            return v + "x"
        if choice == 18:
            return "a||" + v[: max(1, len(v) // 2)] + "*"
        if choice == 19:
            return v + "*|nomatch"
        if choice == 20:
            return v.rstrip() + "  " if v.strip() else " "
        if choice == 21:
            return v[:-1] if len(v) > 1 else "x"
        if choice == 22:  # a backslash-escaped character inside a glob
            k = r.randrange(len(v))
            return v[:k] + "\\" + v[k:] + r.choice(["*", ""])
        if choice == 23:  # unterminated bracket: a literal '['
            return v + r.choice(["[", "[*", "[!"])
        # (a value cannot end in a backslash: '\\"' is an escaped quote in udev's syntax)
        return r.choice(["*" + v[len(v) // 2 :], "[" + v[:1] + "]" + v[1:], v[:1] + "\\" + v[1:] if len(v) > 1 else v])

    def op(self) -> str:
        return "==" if self.rnd.random() < 0.7 else "!="

    @staticmethod
    def ancestors(dev: Device) -> list[Device]:
        return list(dev.chain())

    # ---- keys ----------------------------------------------------------------------------
    def device_key(self, dev: Device) -> Optional[str]:
        r = self.rnd
        kind = r.choice(["KERNEL", "KERNEL", "SUBSYSTEM", "SUBSYSTEM", "DRIVER", "DEVPATH", "ACTION", "ENV", "ENV",
                         "ENV", "ATTR", "ATTR", "ATTR", "ATTR", "TAG", "SYMLINK", "NAME", "TEST", "ENVMISS",
                         "ATTRMISS", "USEC", "CONST", "SYSCTL", "ATTRDEV", "TESTDEV"])
        if kind == "USEC":  # udev sets it only after the rules ran (issue 12, class 2)
            return f'ENV{{USEC_INITIALIZED}}{self.op()}"{r.choice(["?*", "", "*", "[0-9]*", "1*"])}"'
        if kind == "CONST":  # class 7
            name = r.choice(["arch", "virt"])
            return f'CONST{{{name}}}{self.op()}"{r.choice(CONST_VALUES)}"'
        if kind == "SYSCTL":
            name, value = r.choice(SYSCTLS)
            return f'SYSCTL{{{name}}}{self.op()}"{self.mutate(value) if value else r.choice(["", "?*", "x"])}"'
        if kind == "ATTRDEV":  # another device's attribute: [subsystem/sysname]attr
            other = r.choice(self.devices)
            pairs = self.attrs_of(other)
            if not other.subsystem or not pairs or r.random() < 0.1:
                return f'ATTR{{[devplug_none/x]dev}}{self.op()}"{r.choice(["", "x", "?*"])}"'
            n, v = r.choice(pairs)
            return f'ATTR{{[{other.subsystem}/{other.sysname}]{n}}}{self.op()}"{self.mutate(v or "")}"'
        if kind == "TESTDEV":
            other = r.choice(self.devices)
            what = r.choice([n for n, _ in self.attrs_of(other)] or ["uevent"]) if r.random() < 0.7 else "nope"
            return f'TEST{self.op()}"[{other.subsystem or "none"}/{other.sysname}]{what}"'
        if kind == "TEST" and r.random() < 0.3:  # a '*' component (class 1)
            return f'TEST{self.op()}"{r.choice(GLOB_TESTS)}"'
        if kind == "KERNEL":
            return f'KERNEL{self.op()}"{self.mutate(dev.sysname)}"'
        if kind == "SUBSYSTEM":
            val = r.choice([self.mutate(dev.subsystem or ""), "subsystem", "bus|class"])
            return f'SUBSYSTEM{self.op()}"{val}"'
        if kind == "DRIVER":
            return f'DRIVER{self.op()}"{self.mutate(dev.driver or "")}"'
        if kind == "DEVPATH":
            return f'DEVPATH{self.op()}"{self.mutate(dev.devpath)}"'
        if kind == "ACTION":
            return f'ACTION{self.op()}"{r.choice(["add", "change", "add|change", "a*", "remove", "", "?*"])}"'
        if kind == "NAME":
            return f'NAME{self.op()}"{self.mutate(dev.properties.get("ID_NET_NAME", dev.sysname))}"'
        if kind in ("ENV", "ENVMISS"):
            props = [(k, v) for k, v in sorted(dev.properties.items())
                     if quotable(v) and quotable(k) and "{" not in k and "}" not in k
                     and k not in _VOLATILE_PROPS and not k.startswith("DEVPLUG_")
                     and not (k in _SET_PROPS and len(v.strip(_SET_PROPS[k]).split(_SET_PROPS[k])) > 1)]
            if kind == "ENVMISS" or not props:
                return f'ENV{{DEVPLUG_ABSENT}}{self.op()}"{r.choice(["", "?*", "x", "|x", "*"])}"'
            k, v = r.choice(props)
            return f'ENV{{{k}}}{self.op()}"{self.mutate(v)}"'
        if kind in ("ATTR", "ATTRMISS"):
            pairs = self.attrs_of(dev)
            if kind == "ATTRMISS" or not pairs:
                return f'ATTR{{devplug_absent}}{self.op()}"{r.choice(["", "?*", "x", "*"])}"'
            n, v = r.choice(pairs)
            return f'ATTR{{{n}}}{self.op()}"{self.mutate(v or "")}"'
        if kind == "TAG":
            tags = sorted(dev.tags)
            val = self.mutate(r.choice(tags)) if tags and r.random() < 0.8 else r.choice(["systemd", "*", "", "x"])
            return f'TAG{self.op()}"{val}"'
        if kind == "SYMLINK":
            links = [s[5:] for s in dev.symlinks if s.startswith("/dev/") and quotable(s)]
            val = self.mutate(r.choice(links)) if links and r.random() < 0.8 else r.choice(["*", "", "char/*", "x"])
            return f'SYMLINK{self.op()}"{val}"'
        if kind == "TEST":
            pairs = self.attrs_of(dev)
            path = r.choice([n for n, _ in pairs] or ["uevent"]) if r.random() < 0.6 else r.choice(
                ["/dev/kvm", "/dev/null", "/nonexistent", "subsystem", "driver", "device", "power/control",
                 "devplug_absent"])
            mode = r.choice(["", "", "{0200}", "{0111}", "{0444}"])
            return f'TEST{mode}{self.op()}"{path}"'
        return None

    def parent_key(self, node: Device) -> Optional[str]:
        r = self.rnd
        kind = r.choice(["KERNELS", "SUBSYSTEMS", "DRIVERS", "ATTRS", "ATTRS", "ATTRS", "ATTRS", "TAGS"])
        if kind == "KERNELS":
            return f'KERNELS{self.op()}"{self.mutate(node.sysname)}"'
        if kind == "SUBSYSTEMS":
            return f'SUBSYSTEMS{self.op()}"{self.mutate(node.subsystem or "")}"'
        if kind == "DRIVERS":
            return f'DRIVERS{self.op()}"{self.mutate(node.driver or "")}"'
        if kind == "TAGS":
            tags = sorted(node.tags)
            val = self.mutate(r.choice(tags)) if tags else r.choice(["systemd", "", "*"])
            return f'TAGS{self.op()}"{val}"'
        pairs = self.attrs_of(node)
        if not pairs or r.random() < 0.05:
            return f'ATTRS{{devplug_absent}}{self.op()}"{r.choice(["", "?*", "x"])}"'
        n, v = r.choice(pairs)
        return f'ATTRS{{{n}}}{self.op()}"{self.mutate(v or "")}"'

    def maybe_escaped(self, key: str) -> str:
        """Sometimes rewrite KEY=="value" as KEY==e"value" with one character as \\xNN."""
        q = key.find('"')
        value = key[q + 1 : -1]
        if self.rnd.random() > 0.08 or not value or "\\" in value:
            return key
        k = self.rnd.randrange(len(value))
        return f'{key[:q]}e"{value[:k]}\\x{ord(value[k]):02x}{value[k + 1:]}"'

    def rule_keys(self, dev: Device) -> list[str]:
        r = self.rnd
        keys: list[str] = []
        for _ in range(r.choice([1, 1, 2, 2, 2, 3])):
            k = self.device_key(dev)
            if k:
                keys.append(k)
        if r.random() < 0.6:
            chain = self.ancestors(dev)
            if r.random() < 0.6:
                nodes = [r.choice(chain)] * r.choice([1, 2, 2, 3])  # same ancestor
            else:
                nodes = [r.choice(chain) for _ in range(r.choice([2, 3]))]  # maybe different ones
            for node in nodes:
                k = self.parent_key(node)
                if k:
                    keys.append(k)
        r.shuffle(keys)
        return [self.maybe_escaped(k) for k in keys]

    def probe(self, dev: Device, i: int) -> Optional[str]:
        """Sometimes an ENV{} assignment whose value the two sides must agree on. Names start
        with '.': udev keeps such properties out of its database (``udevadm test`` prints
        them), so the probes never reach the records devplug reads."""
        r = self.rnd
        if r.random() > 0.35:
            return None
        if r.random() < 0.25:  # grows until udev refuses to append (512 bytes)
            return f'ENV{{.DEVPLUG_ORACLE_ACC}}+="{"a" * r.randrange(20, 140)}%k"'
        if r.random() < 0.2:
            return f'ENV{{.DEVPLUG_ORACLE_V{i}}}="{"L" * r.randrange(500, 512)}%k"'
        names = [n for node in dev.chain() for n, _ in self.attrs_of(node)] or ["vendor"]
        template = r.choice(PROBES).format(a=r.choice(names + ["vendor", "idVendor", "driver"]))
        return f'ENV{{.DEVPLUG_ORACLE_V{i}}}="[{template}]"'

    def rules(self, count: int) -> Iterator[list[str]]:
        for keys, _dev in self.rules_with_devices(count):
            yield keys

    def rules_with_devices(self, count: int) -> Iterator[tuple[list[str], Device]]:
        for _ in range(count):
            dev = self.rnd.choice(self.devices)
            yield self.rule_keys(dev), dev
