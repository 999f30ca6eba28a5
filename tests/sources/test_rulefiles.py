"""Which rules files are read (udev's model), and files that are not rules: real files and symlinks."""

from __future__ import annotations

import os
import threading

import pytest

from devplug.cli import main
from devplug.core.rules import RulesError
from devplug.sources.rulefiles import digest, read_rules, select_files


def rule(resource: str) -> str:
    return f'KERNEL=="x", RESOURCE="{resource}"\n'


def errors(exc: pytest.ExceptionInfo) -> list[str]:
    return [str(e) for e in exc.value.errors]


def test_one_name_order_across_directories_and_a_later_path_overrides(tmp_path):
    defaults, site = tmp_path / "defaults", tmp_path / "site"
    defaults.mkdir(), site.mkdir()
    (defaults / "10-serial.rules").write_text(rule("default-serial"))
    (defaults / "30-video.rules").write_text(rule("video"))
    (site / "10-serial.rules").write_text(rule("site-serial"))
    (site / "20-extra.rules").write_text(rule("extra"))
    rs = read_rules([str(defaults), str(site)])
    assert rs.files == (str(site / "10-serial.rules"), str(site / "20-extra.rules"), str(defaults / "30-video.rules"))
    assert rs.resources() == {"devplug.io/site-serial", "devplug.io/extra", "devplug.io/video"}
    # Order of the paths decides which same-named file wins, not where it sorts.
    assert read_rules([str(site), str(defaults)]).files[0] == str(defaults / "10-serial.rules")


def test_a_file_path_takes_part_under_its_name(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "10-a.rules").write_text(rule("a"))
    (d / "50-b.rules").write_text(rule("b"))
    single = tmp_path / "20-single.conf"
    single.write_text(rule("single"))
    override = tmp_path / "50-b.rules"
    override.write_text(rule("b2"))
    assert read_rules([str(d), str(single), str(override)]).files == (
        str(d / "10-a.rules"), str(single), str(override))


def test_hidden_files_are_skipped_and_dev_null_masks(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / ".99-hidden.rules").write_text(rule("hidden"))
    (a / "..data").mkdir()  # what a ConfigMap volume holds
    (a / "10-x.rules").write_text(rule("x"))
    (a / "20-y.rules").write_text(rule("y"))
    os.symlink("/dev/null", b / "20-y.rules")
    rs = read_rules([str(a), str(b)])
    assert rs.resources() == {"devplug.io/x"}
    assert str(a / ".99-hidden.rules") not in rs.files


def test_dangling_and_looping_symlinks_are_errors(tmp_path, capsys):
    (tmp_path / "10-ok.rules").write_text(rule("ok"))
    os.symlink(tmp_path / "gone", tmp_path / "20-dangling.rules")
    os.symlink(tmp_path / "30-loop.rules", tmp_path / "30-loop.rules")
    os.mkfifo(tmp_path / "40-fifo.rules")  # never opened: it would block the reader forever
    with pytest.raises(RulesError) as exc:
        read_rules([str(tmp_path)])
    assert errors(exc) == [
        f"{tmp_path}/20-dangling.rules: dangling symlink (to {tmp_path}/gone)",
        f"{tmp_path}/30-loop.rules: symlink loop",
        f"{tmp_path}/40-fifo.rules: not a regular file",
    ]
    code = main(["rules", "check", str(tmp_path)])
    _out, err = capsys.readouterr()
    assert code == 1 and "20-dangling.rules: dangling symlink" in err and "30-loop.rules: symlink loop" in err
    assert digest([str(tmp_path)])  # the watcher's digest never fails or blocks on them


def test_a_binary_file_is_one_error_and_many_errors_are_counted(tmp_path):
    (tmp_path / "10-binary.rules").write_bytes(bytes(range(256)) * 800)
    (tmp_path / "20-garbage.rules").write_text("".join(f"not a rule {i}\n" for i in range(50)))
    with pytest.raises(RulesError) as exc:
        read_rules([str(tmp_path)])
    lines = errors(exc)
    assert lines[0] == f"{tmp_path}/10-binary.rules: binary file (800 NUL bytes in 204,800 characters), not a rules file"
    assert len(lines) == 1 + 10 + 1
    assert lines[-1] == f"{tmp_path}/20-garbage.rules: 40 more errors in this file (50 in all)"


def test_a_rules_set_over_the_size_limit_is_one_error_before_reading(tmp_path, capsys):
    (tmp_path / "10-a.rules").write_text(rule("a") * 10)
    (tmp_path / "20-b.rules").write_text(rule("b") * 100)
    with pytest.raises(RulesError) as exc:
        read_rules([str(tmp_path)], max_bytes=1000)
    assert errors(exc) == [f"{tmp_path}/20-b.rules: rules set is 2,860 bytes in 2 file(s), over the limit of "
                           "1,000 bytes (--max-rules-bytes); this file is 2,600"]
    assert read_rules([str(tmp_path)], max_bytes=2860).resources() == {"devplug.io/a", "devplug.io/b"}
    code = main(["rules", "check", str(tmp_path), "--max-rules-bytes", "1K"])
    _out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 2 and "over the limit of 1,024 bytes" in err


def test_read_rules_is_thread_safe(tmp_path):
    for i in range(20):
        (tmp_path / f"{i:02d}.rules").write_text("".join(f'KERNEL=="k{i}-{j}", ATTRS{{x}}=="{j}", RESOURCE="r{i}"\n'
                                                       for j in range(200)))
    expected = read_rules([str(tmp_path)])
    results: list = []

    def work() -> None:
        rs = read_rules([str(tmp_path)])
        results.append((rs.files, [r.ref for r in rs.rules]))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(expected.files, [r.ref for r in expected.rules])] * 4


def test_select_files_missing_ok_for_the_watcher(tmp_path):
    assert select_files([str(tmp_path / "nope")], missing_ok=True)[0] == [str(tmp_path / "nope")]
    with pytest.raises(FileNotFoundError):
        select_files([str(tmp_path / "nope")])


def test_max_rules_bytes_flag_and_environment(monkeypatch):
    from devplug import config
    from devplug.cli import build_parser

    assert config.parse_bytes("1048576") == config.parse_bytes("1M") == config.parse_bytes("1MiB") == 1 << 20
    assert config.parse_bytes("512K") == 512 * 1024
    args = build_parser().parse_args(["run", "--max-rules-bytes", "4M"])
    assert args.max_rules_bytes == 4 << 20
    assert build_parser().parse_args(["run"]).max_rules_bytes == config.MAX_RULES_BYTES
    monkeypatch.setenv("DEVPLUG_MAX_RULES_BYTES", "2M")
    assert build_parser().parse_args(["run"]).max_rules_bytes == 2 << 20
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--max-rules-bytes", "lots"])
