"""The fakes must expose exactly the real services' public API, with the same
signatures, so code written against one runs against the other."""

from __future__ import annotations

import inspect

import pytest

from csi_py.linux import FilesystemService, Host, LoopService, MountService, real_host
from csi_py.linux.fs import Filesystems
from csi_py.linux.loop import LoopManager
from csi_py.linux.mount import Mounter
from tests.fakes import FakeFilesystems, FakeLoopManager, FakeMounter, fake_host

PAIRS = [
    (LoopManager, FakeLoopManager, LoopService),
    (Mounter, FakeMounter, MountService),
    (Filesystems, FakeFilesystems, FilesystemService),
]
# Test-only helpers the fakes add on top of the real API.
FAKE_EXTRAS = {"fail_next", "hold_open", "release", "inject_error"}


def public_methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in inspect.getmembers(cls, inspect.isfunction)
        if not name.startswith("_")
    }


@pytest.mark.parametrize("real, fake, _proto", PAIRS, ids=lambda c: c.__name__)
def test_same_public_methods_and_signatures(real, fake, _proto):
    real_api = public_methods(real)
    fake_api = public_methods(fake)
    assert set(fake_api) - FAKE_EXTRAS == set(real_api)
    for name, signature in real_api.items():
        assert fake_api[name] == signature, name


@pytest.mark.parametrize("real, fake, proto", PAIRS, ids=lambda c: c.__name__)
def test_protocol_lists_every_public_method(real, fake, proto):
    proto_methods = {
        name for name in vars(proto) if not name.startswith("_") and callable(vars(proto)[name])
    }
    assert proto_methods == set(public_methods(real))


def test_hosts_satisfy_protocols():
    for host in (real_host(), fake_host()):
        assert isinstance(host, Host)
        assert isinstance(host.loops, LoopService)
        assert isinstance(host.mounts, MountService)
        assert isinstance(host.fs, FilesystemService)


def test_host_is_frozen():
    host = fake_host()
    with pytest.raises(AttributeError):
        host.loops = None  # type: ignore[misc]
