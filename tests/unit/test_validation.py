"""Unit tests of request-field validation (pure functions)."""

import pytest

from csi_py.core import validation as v
from csi_py.domain.errors import InvalidArgument


def test_new_volume_ids_are_well_formed_and_unique():
    ids = {v.new_volume_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(v.is_volume_id(i) for i in ids)


@pytest.mark.parametrize("bad", ["", "vol-", "../etc", "vol-" + "g" * 32, "vol-" + "a" * 33,
                                 "VOL-" + "a" * 32, "vol-" + "a" * 31 + "/", "some-id"])
def test_is_volume_id_rejects_anything_else(bad):
    assert not v.is_volume_id(bad)


def test_check_string_limits_bytes_not_characters():
    v.check_string("a" * 128, "name")
    with pytest.raises(InvalidArgument, match="129 bytes"):
        v.check_string("a" * 129, "name")
    with pytest.raises(InvalidArgument, match="130 bytes"):
        v.check_string("é" * 65, "name")


def test_check_string_refuses_control_characters_and_empty():
    # The CSI spec bans U+0000-U+0008, U+000B, U+000C, U+000E-U+001F, U+007F-U+009F.
    for bad in ("a\x07b", "a\x0bb", "a\x7fb", "a\x85b"):
        with pytest.raises(InvalidArgument, match="control"):
            v.check_string(bad, "name")
    # ...and allows the common whitespace: tab, LF and CR.
    for good in ("a\tb", "a\nb", "a\rb"):
        assert v.check_string(good, "name") == good
    with pytest.raises(InvalidArgument, match="required"):
        v.check_string("", "name")


def test_check_name_also_refuses_line_breaks_and_tabs():
    # Names end up in log lines and CLI tables: a newline would split or forge a line.
    for bad in ("a\nb", "a\rb", "a\tb", "a\x00b"):
        with pytest.raises(InvalidArgument, match="control character"):
            v.check_name(bad, "name")
    assert v.check_name("pvc-1d0e-é", "name") == "pvc-1d0e-é"


def test_check_map_enforces_4k():
    v.check_map({"k": "v" * 4000}, "parameters")
    with pytest.raises(InvalidArgument, match="4096"):
        v.check_map({"k": "v" * 4096}, "parameters")


@pytest.mark.parametrize(
    "path,why",
    [
        ("relative/path", "absolute"),
        ("/a/../b", "'..'"),
        ("/a/./b", "normalized"),
        ("/a//b", "normalized"),
        ("/a\x00b", "control"),
        ("/", "root"),
        ("", "required"),
    ],
)
def test_check_absolute_path_refuses(path, why):
    with pytest.raises(InvalidArgument, match=why):
        v.check_absolute_path(path, "target_path")


def test_check_absolute_path_strips_a_trailing_slash():
    assert v.check_absolute_path("/var/lib/x/", "p") == "/var/lib/x"


def test_check_no_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(InvalidArgument, match="symlink"):
        v.check_no_symlink(str(link), "target_path")
    with pytest.raises(InvalidArgument, match="through a symlink"):
        v.check_no_symlink(str(link / "child"), "target_path")
    v.check_no_symlink(str(real / "child"), "target_path")  # not existing yet: fine


@pytest.mark.parametrize("flag", ["suid", "dev", "exec", "ro,suid", "noatime,dev", "data=x,y",
                                  "foo", "context=system_u", "commit=$(reboot)", "a b"])
def test_mount_flags_outside_the_allow_list_are_refused(flag):
    with pytest.raises(InvalidArgument):
        v.check_mount_flags([flag])


def test_allowed_mount_flags_pass_and_defaults_is_dropped():
    assert v.check_mount_flags(["defaults", "noatime", "data=ordered", "commit=30"]) == (
        "noatime", "data=ordered", "commit=30")
