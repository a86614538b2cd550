"""LoopManager against real loop devices (backing files in the test's tmp dir)."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import re
import threading

import pytest

from csi_py.linux import _loop_abi as abi
from csi_py.linux import loop as loop_mod
from csi_py.linux import loop_sysfs
from csi_py.linux.errors import DeviceBusy, LoopError
from csi_py.linux.loop import LoopManager
from tests.lifecycle import MiB

pytestmark = pytest.mark.integration


def sysfs(dev, rel: str) -> str:
    with open(f"/sys/block/loop{dev.number}/{rel}") as f:
        return f.read().strip()


# ---- ABI -------------------------------------------------------------------------


def test_abi_matches_kernel_header():
    header = "/usr/include/linux/loop.h"
    if not os.path.exists(header):
        pytest.skip("linux/loop.h not installed")
    text = open(header).read()
    defines = dict(re.findall(r"#define\s+(LOOP_\w+)\s+(0x[0-9A-Fa-f]+)", text))
    for name in (
        "LOOP_SET_FD", "LOOP_CLR_FD", "LOOP_SET_STATUS64", "LOOP_GET_STATUS64",
        "LOOP_SET_CAPACITY", "LOOP_SET_DIRECT_IO", "LOOP_SET_BLOCK_SIZE", "LOOP_CONFIGURE",
        "LOOP_CTL_GET_FREE",
    ):  # fmt: skip
        assert getattr(abi, name) == int(defines[name], 16), name
    flags = dict(re.findall(r"(LO_FLAGS_\w+)\s*=\s*(\d+)", text))
    for name in ("LO_FLAGS_READ_ONLY", "LO_FLAGS_AUTOCLEAR", "LO_FLAGS_PARTSCAN",
                 "LO_FLAGS_DIRECT_IO"):  # fmt: skip
        assert getattr(abi, name) == int(flags[name]), name
    assert ctypes.sizeof(abi.LoopInfo64) == 232
    assert ctypes.sizeof(abi.LoopConfig) == 304
    assert abi.LoopInfo64.lo_flags.offset == 52
    assert abi.LoopInfo64.lo_file_name.offset == 56
    assert abi.LoopInfo64.lo_init.offset == 216


# ---- attach ----------------------------------------------------------------------


def test_attach_reports_direct_io_in_sysfs(kit):
    image = kit.image(size=32 * MiB)
    dev = kit.loops.attach(image)
    assert dev.path == f"/dev/loop{dev.number}"
    assert dev.backing_file == image
    assert dev.size_bytes == 32 * MiB
    assert dev.direct_io is True
    assert sysfs(dev, "loop/dio") == "1"
    assert dev.read_only is False and sysfs(dev, "ro") == "0"
    # Never autoclear (block volumes are bind-mounted nodes nobody holds open)
    # and no partition scan.
    assert sysfs(dev, "loop/autoclear") == "0"
    assert sysfs(dev, "loop/partscan") == "0"
    assert dev.logical_block_size == 512
    assert os.path.exists(dev.path)
    kit.loops.detach(dev.path)


def test_attach_sets_lo_file_name_truncated(kit):
    image = kit.image("n" * 80 + ".img", size=MiB)
    dev = kit.loops.attach(image)
    fd = os.open(dev.path, os.O_RDONLY)
    try:
        buf = bytearray(232)
        fcntl.ioctl(fd, abi.LOOP_GET_STATUS64, buf, True)
    finally:
        os.close(fd)
    info = abi.LoopInfo64.from_buffer_copy(buf)
    name = bytes(info.lo_file_name).rstrip(b"\0")
    assert name == image.encode()[:63]
    assert info.lo_flags & abi.LO_FLAGS_AUTOCLEAR == 0
    # sysfs has the whole path, which is what discovery uses.
    assert dev.backing_file == image
    kit.loops.detach(dev.path)


def test_attach_buffered_when_asked(kit):
    dev = kit.device(direct_io=False)
    assert dev.direct_io is False and sysfs(dev, "loop/dio") == "0"


def test_attach_read_only(kit):
    dev = kit.device(read_only=True)
    assert dev.read_only and sysfs(dev, "ro") == "1"
    # Linux lets root open a read-only block device for writing; writes fail.
    # O_DIRECT so the write reaches the block layer instead of the page cache.
    fd = os.open(dev.path, os.O_WRONLY | os.O_DIRECT)
    try:
        page = mmap.mmap(-1, 4096)  # page-aligned buffer, as O_DIRECT needs
        with pytest.raises(OSError) as exc:
            os.write(fd, page)
        assert exc.value.errno in (errno.EPERM, errno.EROFS, errno.EACCES)
    finally:
        os.close(fd)


def test_attach_read_only_file_without_write_permission(kit):
    image = kit.image(size=MiB)
    os.chmod(image, 0o400)
    dev = kit.loops.attach(image, read_only=True)  # root could write, but only reads
    assert dev.read_only


@pytest.mark.parametrize(
    "make, err",
    [
        (lambda kit: kit.path("missing.img"), errno.ENOENT),
        (lambda kit: kit.dir("adir"), errno.EISDIR),
    ],
)
def test_attach_bad_backing_file(kit, make, err):
    target = make(kit)
    with pytest.raises(LoopError) as exc:
        kit.loops.attach(target)
    assert exc.value.errno == err
    assert target in str(exc.value)
    assert kit.loops.find_by_backing_file(target) == []


def test_attach_fifo_is_not_a_regular_file(kit):
    fifo = kit.path("fifo")
    os.mkfifo(fifo)
    with pytest.raises(LoopError) as exc:
        kit.loops.attach(fifo, read_only=True)
    # Opening a FIFO with nobody on the other end would block: attach must refuse
    # it before opening.
    assert exc.value.errno == errno.EINVAL


def test_attach_not_idempotent_and_find_lists_both(kit):
    image = kit.image(size=MiB)
    a = kit.loops.attach(image)
    b = kit.loops.attach(image)
    assert a.number != b.number
    found = kit.loops.find_by_backing_file(image)
    assert {d.path for d in found} == {a.path, b.path}


def test_concurrent_attach_gets_distinct_devices(kit):
    images = [kit.image(f"c{i}.img", size=MiB) for i in range(8)]
    results: list = [None] * len(images)
    errors: list = []

    def work(i: int) -> None:
        try:
            results[i] = LoopManager().attach(images[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({d.path for d in results}) == len(images)
    for image, dev in zip(images, results, strict=True):
        assert kit.loops.get(dev.path).backing_file == image


def test_attach_retries_when_free_device_is_taken(kit, monkeypatch):
    # Simulate the race: GET_FREE hands out a device someone else has just
    # configured, so LOOP_CONFIGURE fails with EBUSY and attach must move on.
    taken = kit.device(size=MiB)
    lm = LoopManager()
    real_get_free = lm._get_free
    calls = []

    def racy_get_free(path: str) -> int:
        calls.append(path)
        return taken.number if len(calls) == 1 else real_get_free(path)

    monkeypatch.setattr(lm, "_get_free", racy_get_free)
    dev = lm.attach(kit.image("second.img", size=MiB))
    assert len(calls) == 2
    assert dev.number != taken.number
    assert kit.loops.get(taken.path).backing_file == taken.backing_file


def test_attach_gives_up_after_bounded_retries(kit, monkeypatch):
    taken = kit.device(size=MiB)
    lm = LoopManager()
    monkeypatch.setattr(lm, "_get_free", lambda path: taken.number)
    with pytest.raises(LoopError) as exc:
        lm.attach(kit.image("third.img", size=MiB))
    assert exc.value.errno == errno.EBUSY


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOTTY])
def test_legacy_attach_without_loop_configure(kit, monkeypatch, err):
    # Kernels before 5.8 answer LOOP_CONFIGURE with ENOTTY or EINVAL.
    real_ioctl = fcntl.ioctl

    def old_kernel_ioctl(fd, request, *args):
        if request == abi.LOOP_CONFIGURE:
            raise OSError(err, os.strerror(err))
        return real_ioctl(fd, request, *args)

    monkeypatch.setattr(loop_mod.fcntl, "ioctl", old_kernel_ioctl)
    image = kit.image(size=8 * MiB)
    dev = kit.loops.attach(image)
    assert dev.backing_file == image and dev.size_bytes == 8 * MiB
    assert dev.direct_io is True
    ro = kit.loops.attach(kit.image("ro.img", size=MiB), read_only=True, direct_io=False)
    assert ro.read_only and not ro.direct_io
    monkeypatch.undo()
    kit.loops.detach(dev.path)
    kit.loops.detach(ro.path)


def test_missing_device_node_is_created(kit, monkeypatch):
    # A container's /dev that is not devtmpfs never gets nodes for loop devices
    # created later; attach then makes the node itself (here in a private dir).
    devdir = kit.dir("dev")
    monkeypatch.setattr(loop_sysfs, "_NODE_WAIT", 0.01)
    lm = LoopManager(dev_dir=devdir)
    dev = lm.attach(kit.image(size=MiB))
    assert dev.path == os.path.join(devdir, f"loop{dev.number}")
    st = os.stat(dev.path)
    assert os.major(st.st_rdev) == 7
    lm.detach(dev.path)
    assert kit.loops.get(f"/dev/loop{dev.number}") is None or (
        kit.loops.get(f"/dev/loop{dev.number}").backing_file != dev.backing_file
    )


# ---- block size and direct I/O fallback ------------------------------------------


@pytest.fixture
def fourk_pool(kit):
    """A directory on an ext4 whose device has 4096-byte logical sectors, so
    direct I/O needs 4096-byte alignment there."""
    outer = kit.device(size=64 * MiB, block_size=4096)
    assert outer.logical_block_size == 4096
    kit.fs.format(outer.path, "ext4")
    mnt = kit.dir("fourk")
    kit.mounts.mount(outer.path, mnt, "ext4")
    return mnt


def test_block_size_follows_backing_dio_alignment(kit, fourk_pool):
    image = os.path.join(fourk_pool, "vol.img")
    with open(image, "wb") as f:
        f.truncate(8 * MiB)
    dev = kit.loops.attach(image)
    assert dev.logical_block_size == 4096
    assert dev.direct_io is True
    kit.loops.detach(dev.path)
    # Same answer when attached buffered: the block size must not depend on it.
    dev = kit.loops.attach(image, direct_io=False)
    assert dev.logical_block_size == 4096
    kit.loops.detach(dev.path)


def test_direct_io_refused_falls_back_to_buffered(kit, fourk_pool):
    image = os.path.join(fourk_pool, "vol.img")
    with open(image, "wb") as f:
        f.truncate(8 * MiB)
    # 512-byte sectors on a file that needs 4096-aligned direct I/O: refused.
    dev = kit.loops.attach(image, block_size=512)
    assert dev.logical_block_size == 512
    assert dev.direct_io is False and sysfs(dev, "loop/dio") == "0"
    with pytest.raises(LoopError) as exc:
        kit.loops.set_direct_io(dev.path, True)
    assert exc.value.errno == errno.EINVAL
    kit.loops.detach(dev.path)


def test_attach_rejects_bad_block_size(kit):
    with pytest.raises(ValueError):
        kit.loops.attach(kit.image(size=MiB), block_size=1000)
    assert kit.loops.find_by_backing_file(kit.path("vol.img")) == []


def test_set_direct_io_toggles(kit):
    dev = kit.device(size=MiB)
    kit.loops.set_direct_io(dev.path, False)
    assert sysfs(dev, "loop/dio") == "0" and not kit.loops.get(dev.path).direct_io
    kit.loops.set_direct_io(dev.path, False)  # idempotent
    kit.loops.set_direct_io(dev.path, True)
    assert kit.loops.get(dev.path).direct_io


# ---- discovery -------------------------------------------------------------------


def test_list_find_get(kit):
    image = kit.image(size=2 * MiB)
    dev = kit.loops.attach(image)
    assert dev in kit.loops.list_attached()
    assert kit.loops.get(dev.path) == dev
    assert kit.loops.find_by_backing_file(image) == [dev]
    # realpath on both sides: a symlinked pool path finds it too.
    link = kit.path("link")
    os.symlink(os.path.dirname(image), link)
    assert kit.loops.find_by_backing_file(os.path.join(link, os.path.basename(image))) == [dev]
    assert kit.loops.find_by_backing_file(kit.path("other.img")) == []


def test_get_of_non_loop_paths(kit):
    assert kit.loops.get("/dev/null") is None
    assert kit.loops.get(kit.image(size=MiB)) is None
    assert kit.loops.get("/dev/loop999999") is None


def test_get_through_another_node_or_bind(kit):
    dev = kit.device(size=MiB)
    target = kit.file("blockvol")
    kit.mounts.bind_mount(dev.path, target)
    assert kit.loops.get(target) == dev
    kit.mounts.unmount(target)


def test_backing_file_deleted_is_reported(kit):
    dev = kit.device(size=MiB)
    os.unlink(dev.backing_file)
    now = kit.loops.get(dev.path)
    assert now.backing_deleted is True
    assert now.backing_file == dev.backing_file  # suffix stripped
    assert kit.loops.find_by_backing_file(dev.backing_file) == [now]
    kit.loops.detach(dev.path)


def test_backing_file_with_spaces(kit):
    image = kit.image("with space .img", size=MiB)
    dev = kit.loops.attach(image)
    assert dev.backing_file == image
    kit.loops.detach(dev.path)


# ---- capacity --------------------------------------------------------------------


def test_refresh_capacity_after_growing_file(kit):
    dev = kit.device(size=16 * MiB)
    with open(dev.backing_file, "r+b") as f:
        f.truncate(48 * MiB)
    assert kit.loops.get(dev.path).size_bytes == 16 * MiB  # not before the ioctl
    kit.loops.refresh_capacity(dev.path)
    assert kit.loops.get(dev.path).size_bytes == 48 * MiB
    assert kit.fs.block_device_size(dev.path) == 48 * MiB
    kit.loops.refresh_capacity(dev.path)  # idempotent


def test_refresh_capacity_of_unattached_device(kit):
    with pytest.raises(LoopError) as exc:
        kit.loops.refresh_capacity("/dev/loop999999")
    assert exc.value.errno == errno.ENXIO


# ---- detach ----------------------------------------------------------------------


def test_detach_is_idempotent(kit):
    dev = kit.device(size=MiB)
    kit.loops.detach(dev.path)
    assert kit.loops.get(dev.path) is None or kit.loops.get(dev.path).backing_file != (
        dev.backing_file
    )
    kit.loops.detach(dev.path)  # already free
    kit.loops.detach("/dev/loop999999")  # never existed


def test_detach_non_loop_path(kit):
    with pytest.raises(LoopError) as exc:
        kit.loops.detach("/dev/null")
    assert exc.value.errno == errno.ENOTBLK


def test_detach_mounted_device_is_busy(kit):
    dev = kit.device()
    kit.fs.format(dev.path, "ext4")
    mnt = kit.dir("mnt")
    kit.mounts.mount(dev.path, mnt, "ext4")
    with pytest.raises(DeviceBusy) as exc:
        kit.loops.detach(dev.path)
    assert mnt in str(exc.value)
    still = kit.loops.get(dev.path)
    assert still is not None and not still.autoclear
    kit.mounts.unmount(mnt)
    kit.loops.detach(dev.path)
    assert kit.loops.find_by_backing_file(dev.backing_file) == []


def test_detach_device_held_open_is_busy_and_stays_attached(kit, monkeypatch):
    monkeypatch.setattr(loop_mod, "_DETACH_WAIT", 0.2)
    dev = kit.device(size=MiB)
    holder = os.open(dev.path, os.O_RDONLY)
    try:
        with pytest.raises(DeviceBusy):
            kit.loops.detach(dev.path)
        # LOOP_CLR_FD left autoclear set; detach must have removed it again so a
        # later close does not silently detach a device we reported as attached.
        still = kit.loops.get(dev.path)
        assert still is not None and still.autoclear is False
    finally:
        os.close(holder)
    assert kit.loops.get(dev.path) == still
    kit.loops.detach(dev.path)
    assert kit.loops.find_by_backing_file(dev.backing_file) == []


def test_detach_waits_for_a_short_lived_holder(kit):
    dev = kit.device(size=MiB)
    holder = os.open(dev.path, os.O_RDONLY)
    timer = threading.Timer(0.2, os.close, args=(holder,))
    timer.start()
    try:
        kit.loops.detach(dev.path)
    finally:
        timer.join()
    assert kit.loops.find_by_backing_file(dev.backing_file) == []


def test_detach_with_bind_mounted_node_succeeds(kit):
    # A bind-mounted device node does not hold the device open.
    dev = kit.device(size=MiB)
    target = kit.file("blockvol")
    kit.mounts.bind_mount(dev.path, target)
    kit.loops.detach(dev.path)
    assert kit.loops.find_by_backing_file(dev.backing_file) == []
    kit.mounts.unmount(target)


# ---- read-ahead, direct I/O and flush -------------------------------------------------


def test_read_ahead_round_trip_in_sysfs(kit):
    dev = kit.device(size=MiB)
    default = kit.loops.get_read_ahead(dev.path)
    assert default == int(sysfs(dev, "queue/read_ahead_kb"))
    kit.loops.set_read_ahead(dev.path, 512)
    assert sysfs(dev, "queue/read_ahead_kb") == "512"
    assert kit.loops.get_read_ahead(dev.path) == 512
    kit.loops.set_read_ahead(dev.path, 512)  # idempotent
    kit.loops.set_read_ahead(dev.path, 6)  # kept in 4 KiB pages
    assert kit.loops.get_read_ahead(dev.path) == 4
    kit.loops.set_read_ahead(dev.path, 0)
    assert sysfs(dev, "queue/read_ahead_kb") == "0"
    kit.loops.set_read_ahead(dev.path, loop_mod.READ_AHEAD_MAX_KIB)
    assert kit.loops.get_read_ahead(dev.path) == loop_mod.READ_AHEAD_MAX_KIB
    # The value outlives the attachment (recent kernels keep it for the next one
    # when it is above the queue's default): leave the device as it was found.
    kit.loops.set_read_ahead(dev.path, default)


@pytest.mark.parametrize("bad", [-1, 65537, True, 1.5, "64"])
def test_read_ahead_out_of_range(kit, bad):
    dev = kit.device(size=MiB)
    before = sysfs(dev, "queue/read_ahead_kb")
    with pytest.raises(ValueError):
        kit.loops.set_read_ahead(dev.path, bad)
    assert sysfs(dev, "queue/read_ahead_kb") == before


def test_read_ahead_of_unattached_device(kit):
    dev = kit.device(size=MiB)
    kit.loops.detach(dev.path)
    for call in (lambda: kit.loops.set_read_ahead(dev.path, 128),
                 lambda: kit.loops.get_read_ahead(dev.path)):  # fmt: skip
        with pytest.raises(LoopError) as exc:
            call()
        assert exc.value.errno == errno.ENXIO
    with pytest.raises(LoopError):
        kit.loops.get_read_ahead(kit.path("not-a-device"))


def test_get_reflects_set_direct_io(kit):
    dev = kit.device(size=MiB)
    assert dev.direct_io and sysfs(dev, "loop/dio") == "1"
    kit.loops.set_direct_io(dev.path, False)
    now = kit.loops.get(dev.path)
    assert now is not None and now.direct_io is False and sysfs(dev, "loop/dio") == "0"
    assert [d.direct_io for d in kit.loops.find_by_backing_file(dev.backing_file)] == [False]
    kit.loops.set_direct_io(dev.path, True)
    assert kit.loops.get(dev.path).direct_io is True and sysfs(dev, "loop/dio") == "1"


@pytest.mark.parametrize("direct_io", [True, False])
def test_flush_makes_device_writes_reach_the_backing_file(kit, direct_io):
    dev = kit.device(size=8 * MiB, direct_io=direct_io)
    payload = os.urandom(64 * 1024)
    fd = os.open(dev.path, os.O_WRONLY)
    try:
        os.pwrite(fd, payload, MiB)  # buffered in the device's page cache
    finally:
        os.close(fd)  # closing a block device does not write it back
    kit.loops.flush(dev.path)
    kit.loops.flush(dev.path)  # idempotent
    with open(dev.backing_file, "rb") as f:
        f.seek(MiB)
        assert f.read(len(payload)) == payload


# ---- devices attached through a mount that is gone ---------------------------------


def test_finds_a_device_attached_through_a_mount_that_has_gone(kit):
    """A node plugin container that restarts sees the loop devices its predecessor
    attached through its own bind mount of the pool, which died with that container's
    mount namespace: sysfs names their backing files from the dead mount's root
    ("/volumes/<id>.img"). They are still found, by inode, and a file with the same
    tail elsewhere is not mistaken for them."""
    import subprocess
    import sys

    pool = kit.dir("pool")
    image = kit.image("pool/volumes/vol.img", 32 * MiB)
    decoy = kit.image("decoy/volumes/vol.img", 32 * MiB)
    view = kit.dir("view")
    script = (
        "import subprocess\n"
        f"subprocess.run(['mount', '--bind', {pool!r}, {view!r}], check=True)\n"
        "from csi_py.linux.loop import LoopManager\n"
        f"print(LoopManager().attach({view!r} + '/volumes/vol.img').path)\n"
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", script],
        capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(
            os.path.dirname(os.path.abspath(__file__)))), check=False)
    assert result.returncode == 0, result.stderr
    device = result.stdout.split()[-1]
    try:
        dev = kit.loops.get(device)
        assert dev is not None and dev.backing_file == "/volumes/vol.img", dev
        assert [d.path for d in kit.loops.find_by_backing_file(image)] == [device]
        assert kit.loops.find_by_backing_file(decoy) == []
    finally:
        kit.loops.detach(device)
