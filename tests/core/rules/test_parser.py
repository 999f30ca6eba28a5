"""Parser: syntax, every error class with its exact location, and a hypothesis property test."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devplug.core.rules import RuleError, RulesError, parse_rules
from devplug.sources.rulefiles import read_rules as load_rules


def errors_of(text: str) -> list[str]:
    _rules, errors = parse_rules(text, "t.rules")
    return [str(e) for e in errors]


def one_rule(text: str):
    rules, errors = parse_rules(text, "t.rules")
    assert not errors, [str(e) for e in errors]
    assert len(rules) == 1
    return rules[0]


def test_comments_blank_lines_and_line_numbers():
    text = '\n# a comment\n   # indented comment\n\nKERNEL=="ttyUSB0", RESOURCE="serial"\n'
    rule = one_rule(text)
    assert rule.ref.line == 5
    assert rule.ref.text == 'KERNEL=="ttyUSB0", RESOURCE="serial"'


def test_continuation_lines_join_and_skip_comment_lines():
    text = ('SUBSYSTEM=="tty", \\\n'
            '    # a comment inside a continued rule is skipped, as udev does\n'
            '    ATTRS{idVendor}=="0403", \\\n'
            '\tRESOURCE="ftdi"\n')
    rule = one_rule(text)
    assert rule.ref.line == 1
    assert [m.text for m in rule.matches] == ['SUBSYSTEM=="tty"', 'ATTRS{idVendor}=="0403"']
    assert rule.assigns[0].value == "ftdi"


def test_error_location_on_a_continued_line():
    text = 'SUBSYSTEM=="tty", \\\n    BOGUS=="x", RESOURCE="a"\n'
    assert errors_of(text) == ["t.rules:2:5: unknown key 'BOGUS'"]


def test_continuation_at_end_of_file_is_an_error():
    assert errors_of('KERNEL=="a", RESOURCE="x" \\') == [
        "t.rules:1:27: line continuation ('\\' at end of line) at end of file"]


def test_crlf_line_endings():
    rules, errors = parse_rules('KERNEL=="a", RESOURCE="x"\r\nKERNEL=="b", RESOURCE="y"\r\n')
    assert not errors and [r.ref.line for r in rules] == [1, 2]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('KERNEL=="a" RESOURCE="x"', "t.rules:1:13: missing comma between key-value pairs"),
        ('KERNEL=="a, RESOURCE="x"', "t.rules:1:23: missing comma between key-value pairs"),
        ('KERNEL=="abc', "t.rules:1:9: unterminated quoted value"),
        ("KERNEL==abc, RESOURCE=\"x\"", 't.rules:1:9: expected a double-quoted value ("...")'),
        ('KERNEL', "t.rules:1:1: expected an operator after 'KERNEL'"),
        ('KERNEL ~ "a"', "t.rules:1:8: expected an operator (==, !=, =, +=, -=, :=) after 'KERNEL'"),
        ('=="a", RESOURCE="x"', "t.rules:1:1: missing key before operator"),
        ('ATTRS{idVendor=="a"', "t.rules:1:6: unterminated '{' (missing '}')"),
        ('FOO=="a", RESOURCE="x"', "t.rules:1:1: unknown key 'FOO'"),
        ('kernel=="a", RESOURCE="x"', "t.rules:1:1: unknown key 'kernel' (did you mean KERNEL?)"),
        ('ATTRS{x}="y", RESOURCE="x"', "t.rules:1:9: invalid operator '=' for ATTRS (a match key: use ==, !=)"),
        ('KERNEL+="y", RESOURCE="x"', "t.rules:1:7: invalid operator '+=' for KERNEL (a match key: use ==, !=)"),
        ('KERNEL=="a", RESOURCE=="x"', "t.rules:1:22: invalid operator '==' for RESOURCE (an assignment key: use =, :=)"),
        ('KERNEL=="a", RESOURCE+="x"', "t.rules:1:22: invalid operator '+=' for RESOURCE (an assignment key: use =, :=)"),
        ('KERNEL{x}=="a", RESOURCE="x"', "t.rules:1:7: KERNEL takes no {attribute}"),
        ('ATTR{}=="a", RESOURCE="x"', "t.rules:1:6: ATTR needs a name in braces, e.g. ATTR{name}"),
        ('ENV=="a", RESOURCE="x"', "t.rules:1:4: ENV needs a name in braces, e.g. ENV{name}"),
        ('KERNEL=="a", RESOURCE="x", SHARE="0"', "t.rules:1:35: SHARE must be an integer from 1 to 10000, got '0'"),
        ('KERNEL=="a", RESOURCE="x", SHARE="10001"', "t.rules:1:35: SHARE must be an integer from 1 to 10000, got '10001'"),
        ('KERNEL=="a", RESOURCE="x", SHARE="two"', "t.rules:1:35: SHARE must be an integer from 1 to 10000, got 'two'"),
        ('KERNEL=="a", RESOURCE="x", PERMISSIONS="rx"',
         "t.rules:1:41: PERMISSIONS must be a non-empty subset of 'rwm', got 'rx'"),
        ('KERNEL=="a", RESOURCE="x", PERMISSIONS=""',
         "t.rules:1:41: PERMISSIONS must be a non-empty subset of 'rwm', got ''"),
        ('KERNEL=="a", RESOURCE="Bad_Name-"',
         "t.rules:1:24: invalid resource 'Bad_Name-': name 'Bad_Name-' must consist of letters, digits, '-', '_' "
         "or '.', and start and end with a letter or digit"),
        ('KERNEL=="a", RESOURCE="kubernetes.io/gpu"',
         "t.rules:1:24: invalid resource 'kubernetes.io/gpu': domain 'kubernetes.io' is reserved for Kubernetes' own resources"),
        ('KERNEL=="a", RESOURCE="foo.kubernetes.io/gpu"',
         "t.rules:1:24: invalid resource 'foo.kubernetes.io/gpu': domain 'foo.kubernetes.io' is reserved for Kubernetes' own resources"),
        ('KERNEL=="a", RESOURCE="requests.example.com/gpu"',
         "t.rules:1:24: invalid resource 'requests.example.com/gpu': domain 'requests.example.com' must not start with 'requests.'"),
        ('KERNEL=="a", RESOURCE="Example.com/gpu"',
         "t.rules:1:24: invalid resource 'Example.com/gpu': domain 'Example.com' is not a DNS subdomain (lowercase letters, digits, '-' and '.')"),
        ('KERNEL=="a", RESOURCE="a/b/c"', "t.rules:1:24: resource 'a/b/c' has more than one '/'"),
        ('KERNEL=="a", RESOURCE="x", MOUNT+="relative:/c"', "t.rules:1:36: MOUNT host path must be absolute, got 'relative'"),
        ('KERNEL=="a", RESOURCE="x", MOUNT+="/a"', "t.rules:1:36: MOUNT must be 'host:container' or 'host:container:ro', got '/a'"),
        ('KERNEL=="a", RESOURCE="x", MOUNT+="/a:/b:rx"',
         "t.rules:1:36: MOUNT must be 'host:container' or 'host:container:ro', got '/a:/b:rx'"),
        ('KERNEL=="a", RESOURCE="x", OPTIONS+="watch"',
         "t.rules:1:38: unknown OPTIONS value 'watch' (devplug knows: symlinks, usb_node)"),
        ('KERNEL=="a", RESOURCE="x", CONTAINER_ENV{1X}="v"',
         "t.rules:1:42: environment variable name '1X' must match [A-Za-z_][A-Za-z0-9_]*"),
        ('KERNEL=="a", RESOURCE="x", DEVICE_ID="%q"',
         "t.rules:1:39: invalid substitution '%q' (write %% for a literal '%')"),
        ('KERNEL=="a", RESOURCE="x", DEVICE_ID="$env"',
         "t.rules:1:39: '$env' needs a name in braces, e.g. $env{NAME}"),
        ('KERNEL=="a", RESOURCE="x", CONTAINER_PATH="dev/x"',
         "t.rules:1:44: CONTAINER_PATH must be an absolute path, got 'dev/x'"),
        ('KERNEL=="a", RUN+="/bin/sh"', "t.rules:1:14: udev key RUN is not supported: devplug never runs programs"),
        ('KERNEL=="a", SYMLINK+="x", RESOURCE="x"',
         't.rules:1:21: SYMLINK+= is not supported: devplug does not create symlinks (match them with SYMLINK==; '
         'expose them with OPTIONS+="symlinks")'),
        ('KERNEL=="a", ATTR{x}="1", RESOURCE="x"',
         "t.rules:1:21: ATTR= is not supported: devplug never writes sysfs attributes (match them with ATTR{}==)"),
        ('KERNEL=="a", ENV{x}:="1", RESOURCE="x"',
         "t.rules:1:20: invalid operator ':=' for ENV (this key: use ==, !=, =, +=)"),
        ('KERNEL=="a", ENV{DEVNAME}="1", RESOURCE="x"', "t.rules:1:18: ENV{DEVNAME} cannot be set (udev reserves it)"),
        ('TEST{abc}=="x", RESOURCE="x"', "t.rules:1:6: TEST{mode} needs an octal mode such as 0111, got 'abc'"),
        ('KERNEL=="a"', 't.rules:1:1: rule assigns nothing (add RESOURCE="..." or another assignment)'),
        ('HOSTPATH=="/dev/mem", KERNEL=="mem", RESOURCE="mem"',
         "t.rules:1:1: HOSTPATH cannot be combined with device match keys (KERNEL): a HOSTPATH rule claims the host path itself"),
        ('HOSTPATH=="dev/mem", RESOURCE="mem"', "t.rules:1:12: HOSTPATH 'dev/mem' is not an absolute path"),
        ('HOSTPATH!="/dev/mem", RESOURCE="mem"',
         "t.rules:1:9: invalid operator '!=' for HOSTPATH (a static host path match: use ==)"),
        ('KERNEL=="a", GOTO="end", RESOURCE="x"', 't.rules:1:14: GOTO="end" has no LABEL="end" after it in this file'),
        ('KERNEL==e"\\q", RESOURCE="x"', "t.rules:1:11: invalid escape '\\q' in e\"...\" string"),
        ('KERNEL==e"\\x00", RESOURCE="x"', "t.rules:1:11: invalid escape '\\x00'"),
        ('KERNEL=="a", ATTRS{[tty/ttyS0]}=="1", RESOURCE="x"',
         "t.rules:1:20: ATTRS{[tty/ttyS0]}: another device's attribute is written [subsystem/sysname]attribute"),
        ('CONST{cvm}=="none", RESOURCE="x"', "t.rules:1:7: CONST{cvm}: udev knows CONST{arch} and CONST{virt}"),
        ('SYSCTL{kernel.x}="1", RESOURCE="x"',
         "t.rules:1:17: SYSCTL= is not supported: devplug never writes sysctls (match them with SYSCTL{}==)"),
    ],
)
def test_error_messages_and_locations(text, expected):
    assert errors_of(text) == [expected]


def test_all_errors_of_a_line_are_reported():
    assert errors_of('FOO=="a", RESOURCE="Bad!", SHARE="x"') == [
        "t.rules:1:1: unknown key 'FOO'",
        "t.rules:1:21: invalid resource 'Bad!': name 'Bad!' must consist of letters, digits, '-', '_' or '.', "
        "and start and end with a letter or digit",
        "t.rules:1:35: SHARE must be an integer from 1 to 10000, got 'x'",
    ]


def test_load_rules_reports_every_error_of_every_file_and_loads_nothing(tmp_path):
    (tmp_path / "10-a.rules").write_text('KERNEL=="a", RESOURCE="ok"\nKERNEL=="b" RESOURCE="x"\n')
    (tmp_path / "20-b.rules").write_text('BAD=="x", RESOURCE="y"\n')
    (tmp_path / "ignored.txt").write_text("not a rules file")
    with pytest.raises(RulesError) as info:
        load_rules([tmp_path])
    assert [str(e) for e in info.value.errors] == [
        f"{tmp_path}/10-a.rules:2:13: missing comma between key-value pairs",
        f"{tmp_path}/20-b.rules:1:1: unknown key 'BAD'",
    ]


def test_load_rules_orders_files_by_name_and_accepts_files(tmp_path):
    (tmp_path / "b.rules").write_text('KERNEL=="b", RESOURCE="b"\n')
    (tmp_path / "a.rules").write_text('KERNEL=="a", RESOURCE="a"\n')
    extra = tmp_path / "extra.conf"
    extra.write_text('KERNEL=="c", RESOURCE="c"\n')
    rs = load_rules([tmp_path, extra])
    assert rs.files == (str(tmp_path / "a.rules"), str(tmp_path / "b.rules"), str(extra))
    assert [r.assigns[0].value for r in rs.rules] == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError):
        load_rules([tmp_path / "missing"])


def test_value_escapes():
    rule = one_rule('KERNEL=="a\\"b", ENV{X}==e"tab\\there\\x41\\101\\\\", RESOURCE="x"')
    assert [m.pattern.source for m in rule.matches] == ['a"b', "tab\there" + "AA\\"]
    # outside e"...", a backslash is kept as it is
    assert one_rule('KERNEL=="a\\nb", RESOURCE="x"').matches[0].pattern.source == "a\\nb"


def test_tabs_spaces_and_stray_commas_between_tokens():
    rule = one_rule('  KERNEL  ==  "a" ,\t,SUBSYSTEM=="tty",RESOURCE="x",  ')
    assert [m.text for m in rule.matches] == ['KERNEL  ==  "a"', 'SUBSYSTEM=="tty"']


def test_goto_label_and_hostpath_parse():
    rules, errors = parse_rules('SUBSYSTEM!="tty", GOTO="end"\nKERNEL=="ttyUSB*", RESOURCE="x"\nLABEL="end"\n'
                                'HOSTPATH=="/dev/mem|/srv/data/*", RESOURCE="mem", PERMISSIONS="r", '
                                'MOUNT+="/srv/data:/data:ro"\n')
    assert not errors
    assert rules[0].goto == "end" and rules[2].label == "end" and rules[2].is_label_only
    assert rules[3].hostpath == ("/dev/mem", "/srv/data/*")


KEYS = ["ACTION", "KERNEL", "SUBSYSTEM", "DRIVER", "ATTR{idVendor}", "ATTRS{serial}", "ENV{ID_X}", "TAG", "TAGS",
        "SYMLINK", "NAME", "TEST{0111}", "KERNELS", "SUBSYSTEMS", "DRIVERS", "DEVPATH", "RESOURCE", "PERMISSIONS",
        "SHARE", "DEVICE_ID", "CONTAINER_PATH", "MOUNT", "CONTAINER_ENV{X}", "ANNOTATION{a/b}", "OPTIONS", "HOSTPATH",
        "GOTO", "LABEL", "RUN", "FOO", "ATTR{}", "ENV{"]
OPS = ["==", "!=", "=", "+=", "-=", ":=", "", "=!"]
VALUES = ['"x"', '"ttyUSB*"', '""', '"a|b"', '"rw"', '"3"', '"/a:/b:ro"', 'e"\\t"', '"unterminated', "bare",
          '"%k-$env{A}"', '"$attr{x"', '"symlinks"', '"/dev/*"', '"\\""']
SEPS = [", ", ",", " ", "", " \\\n ", "\n", "\n# c\n"]


def _check_outcome(text: str) -> None:
    rules, errors = parse_rules(text, "h.rules")
    assert all(isinstance(e, RuleError) for e in errors)
    lines = re.split(r"\r\n|\r|\n", text)
    for e in errors:
        assert e.location.file == "h.rules"
        assert 1 <= e.location.line <= max(1, len(lines))
        assert e.location.column >= 1
        assert e.message and "\n" not in e.message
    for r in rules:
        assert r.ref.text and r.ref.line >= 1


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_arbitrary_text_gives_rules_or_located_errors(text):
    _check_outcome(text)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(OPS), st.sampled_from(VALUES),
                          st.sampled_from(SEPS)), max_size=8))
def test_token_soup_gives_rules_or_located_errors(parts):
    _check_outcome("".join(k + o + v + s for k, o, v, s in parts))


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(OPS), st.sampled_from(VALUES),
                          st.sampled_from([", ", ",", " ", "", " ,, ", "\t,"])), min_size=1, max_size=6))
def test_fast_tokenizer_agrees_with_the_exact_one(parts):
    from devplug.core.rules.lexer import TokenError, _tokenize_slow, token_at, token_texts

    line = "".join(k + o + v + s for k, o, v, s in parts)
    fast = token_texts(line)
    if fast is None:
        return  # the parser takes the exact path for this line
    try:
        exact = _tokenize_slow(line)
    except TokenError:
        pytest.fail(f"fast path accepted a line the exact tokenizer refuses: {line!r}")
    got = [token_at(line, m) for _t, _at, m in fast]
    fields = ("key", "attr", "op", "value", "text", "key_at", "attr_at", "op_at", "value_at")
    assert [[getattr(t, f) for f in fields] for t in got] == [[getattr(t, f) for f in fields] for t in exact]


def test_equal_tokens_share_one_compiled_key():
    """A large rules set repeats itself: one Match/Assign per distinct token text."""
    rules, errors = parse_rules('SUBSYSTEM=="tty", ATTRS{idVendor}=="0403", RESOURCE="a"\n'
                                'SUBSYSTEM=="tty",ATTRS{idVendor}=="10c4", RESOURCE="a"\n', "s.rules")
    assert not errors
    assert rules[0].matches[0] is rules[1].matches[0]
    assert rules[0].assigns[0] is rules[1].assigns[0]
    assert rules[0].matches[1] is not rules[1].matches[1]


def test_every_bad_token_reports_its_own_location_even_when_repeated():
    assert errors_of('KERNEL=="a", FOO="x"\nKERNEL=="b", FOO="x"\n') == [
        "t.rules:1:14: unknown key 'FOO'",
        "t.rules:2:14: unknown key 'FOO'",
    ]


def test_goto_needs_a_later_label_in_the_same_file():
    text = ('KERNEL=="a", GOTO="x"\n'           # ok: LABEL x on line 3
            'LABEL="y", GOTO="y"\n'             # error: its own LABEL is not after it
            'LABEL="x"\n'
            'KERNEL=="b", \\\n  GOTO="x"\n'     # error: no LABEL x after line 4
            'KERNEL=="c", GOTO="z"\n')          # error: no LABEL z at all
    assert errors_of(text) == [
        't.rules:2:12: GOTO="y" has no LABEL="y" after it in this file',
        't.rules:5:3: GOTO="x" has no LABEL="x" after it in this file',
        't.rules:6:14: GOTO="z" has no LABEL="z" after it in this file',
    ]
