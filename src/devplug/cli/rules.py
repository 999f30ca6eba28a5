"""``devplug rules check`` (lint rules files) and ``devplug rules test`` (what rules do to a device)."""

from __future__ import annotations

import argparse
import json
import sys

from .. import config
from ..core.rules import RuleSet, RulesError, check_domain
from ..sources.rulefiles import read_rules

DEFAULT_DOMAIN = config.DOMAIN


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("rules", help="check rules files, or test them against devices",
                              description="Check rules files, or show what they do to devices.")
    sub = p.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])

    c = sub.add_parser("check", help="validate rules files and directories",
                       description="Validate rules; print a summary (exit 0) or every error as "
                                   "file:line:column: message (exit 1).")
    c.add_argument("paths", nargs="+", metavar="PATH", help="rules file or directory of *.rules")
    c.add_argument("--domain", default=DEFAULT_DOMAIN, help="resource domain for short names (default devplug.io)")
    c.add_argument("--max-rules-bytes", type=_bytes, default=config.MAX_RULES_BYTES, metavar="BYTES",
                   help="refuse a rules set larger than this, as devplug run does (default 1 MiB)")
    c.set_defaults(func=run_check)

    t = sub.add_parser("test", help="show which rules match devices and what they assign",
                       description="For each device (a /sys path, a devpath or a /dev node): the rules "
                                   "that matched, the final assignments, the resource and the device ID.")
    t.add_argument("devices", nargs="+", metavar="DEVICE")
    t.add_argument("--rules", action="append", metavar="PATH",
                   help="rules file or directory (repeatable; default: the embedded rules)")
    t.add_argument("--json", action="store_true", help="one JSON object per device per line")
    t.add_argument("--explain", action="store_true", help="also show why each rule did not match")
    t.add_argument("--action", default="add", help="uevent action the rules see (default add)")
    t.add_argument("--domain", default=DEFAULT_DOMAIN, help="resource domain for short names (default devplug.io)")
    t.add_argument("--max-rules-bytes", type=_bytes, default=config.MAX_RULES_BYTES, metavar="BYTES",
                   help="refuse a rules set larger than this, as devplug run does (default 1 MiB)")
    t.set_defaults(func=run_test)


def _bytes(text: str) -> int:
    try:
        return config.parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 1048576, 512K, 4M)") from None


def _load(paths: list[str], domain: str, max_bytes: int = config.MAX_RULES_BYTES) -> RuleSet | int:
    err = check_domain(domain)
    if err:
        print(f"devplug: --domain: {err}", file=sys.stderr)
        return 2
    try:
        return read_rules(paths, max_bytes=max_bytes)
    except RulesError as exc:
        for e in exc.errors:
            print(e, file=sys.stderr)
        print(f"{len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"devplug: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2


def run_check(args: argparse.Namespace) -> int:
    ruleset = _load(args.paths, args.domain, args.max_rules_bytes)
    if isinstance(ruleset, int):
        return ruleset
    n_rules = len(ruleset.rules)
    n_files = len(ruleset.files)
    n_res = len(ruleset.resources(args.domain))
    extra = f", {len(ruleset.hostpath_rules)} HOSTPATH" if ruleset.hostpath_rules else ""
    print(f"ok: {n_rules} rule{'s' if n_rules != 1 else ''} in {n_files} file{'s' if n_files != 1 else ''} "
          f"({n_res} resource{'s' if n_res != 1 else ''}{extra})")
    return 0


def run_test(args: argparse.Namespace) -> int:
    from ..core import identity
    from ..core.claims import refusal
    from ..core.views import claim_json
    from ..sources.system import host
    from ..sources.udev import DeviceNotFound, find_device

    path_mode = host()

    ruleset = _load(args.rules or [config.default_rules_path()], args.domain, args.max_rules_bytes)
    if isinstance(ruleset, int):
        return ruleset
    status = 0
    for spec in args.devices:
        try:
            device = find_device(spec)
        except DeviceNotFound as exc:
            print(f"devplug: {exc}", file=sys.stderr)
            status = 1
            continue
        claim = ruleset.evaluate(device, action=args.action, domain=args.domain, path_mode=path_mode)
        dev_id = identity.device_id(device, claim)
        refused = None if claim.resource is None else refusal(
            device.syspath, claim, base_id=dev_id, devnode=device.devnode, subsystem=device.subsystem,
            symlinks=device.symlinks, usb_node=identity.usb_node(device))
        if args.json:
            obj = {
                "device": spec,
                "syspath": device.syspath,
                "devnode": device.devnode,
                "subsystem": device.subsystem,
                "claim": claim_json(claim, base_id=dev_id, refusal=refused),
            }
            if args.explain:
                obj["trace"] = [{"file": t.rule.file, "line": t.rule.line, "matched": t.matched, "reason": t.reason}
                                for t in ruleset.explain(device, action=args.action, domain=args.domain,
                                                         path_mode=path_mode)]
            print(json.dumps(obj, sort_keys=True))
            continue
        print(f"{device.syspath}" + (f"  ({device.devnode})" if device.devnode else ""))
        if args.explain:
            for t in ruleset.explain(device, action=args.action, domain=args.domain, path_mode=path_mode):
                mark = "MATCH" if t.matched else "no   "
                print(f"  {mark} {t.rule}: {t.rule.text}")
                if t.reason:
                    print(f"          {t.reason}")
        elif claim.matched:
            for r in claim.matched:
                print(f"  matched  {r}: {r.text}")
        else:
            print("  matched  (no rule)")
        print(f"  resource {claim.resource or '(none: device not claimed)'}")
        print(f"  id       {dev_id}")
        if refused is not None:
            print(f"  REFUSED  not offered: {refused.reason}")
        print(f"  permissions={claim.permissions} share={claim.share}"
              + (f" options={','.join(sorted(claim.options))}" if claim.options else ""))
        if claim.container_path:
            print(f"  container_path {claim.container_path}")
        for m in claim.mounts:
            print(f"  mount    {m.host_path} -> {m.container_path}{' (ro)' if m.read_only else ''}")
        for k, v in claim.envs:
            print(f"  env      {k}={v}")
        for k, v in claim.annotations:
            print(f"  annotation {k}={v}")
    return status
