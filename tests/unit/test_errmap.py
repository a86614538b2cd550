"""The one errno table (core/errmap.py) covers every errno the linux layer can raise,
and kernel, pool and catalog failures reach the caller with the spec's code and a
message naming the path and the cause, never INTERNAL."""

from __future__ import annotations

import errno
import os
import re

import grpc
import pytest

from csi_py.core import errmap
from csi_py.core.pool import PoolError
from csi_py.domain import errors as e
from csi_py.linux.errors import KERNEL_ERRNOS, LoopError, MountError
from csi_py.rpc.errors import status_for
from csi_py.state.errors import CatalogError, CatalogFull

LINUX_DIR = os.path.join(os.path.dirname(errmap.__file__), "..", "linux")


def test_every_kernel_errno_is_in_the_one_table_and_none_is_internal():
    missing = sorted(errno.errorcode[n] for n in KERNEL_ERRNOS - set(errmap.ERRNO_ERRORS))
    assert missing == []
    for err, (kind, meaning) in errmap.ERRNO_ERRORS.items():
        assert kind is not e.Internal, errno.errorcode[err]
        assert meaning, errno.errorcode[err]


def test_every_errno_the_linux_sources_name_is_declared():
    named = set()
    for name in os.listdir(LINUX_DIR):
        if name.endswith(".py"):
            with open(os.path.join(LINUX_DIR, name)) as fh:
                named |= set(re.findall(r"errno\.(E[A-Z0-9]+)", fh.read()))
    undeclared = sorted(n for n in named if getattr(errno, n) not in KERNEL_ERRNOS)
    assert named and undeclared == []


@pytest.mark.parametrize("err, code", [
    (errno.ENAMETOOLONG, grpc.StatusCode.INVALID_ARGUMENT),
    (errno.EINVAL, grpc.StatusCode.INVALID_ARGUMENT),
    (errno.ENOENT, grpc.StatusCode.FAILED_PRECONDITION),
    (errno.EACCES, grpc.StatusCode.FAILED_PRECONDITION),
    (errno.EEXIST, grpc.StatusCode.ALREADY_EXISTS),
    (errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errno.EIO, grpc.StatusCode.UNAVAILABLE),
])
def test_a_bare_oserror_gets_the_code_and_names_the_path(err, code):
    exc = OSError(err, os.strerror(err), "/var/lib/kubelet/pods/x/" + "n" * 300)
    assert status_for(exc) == code
    message = str(errmap.translate(exc))
    assert "/var/lib/kubelet/pods/x/" in message and errno.errorcode[err] in message


def test_linux_errors_with_an_errno_go_through_the_table():
    refused = MountError("mount /dev/loop3 on /t failed: EINVAL", target="/t",
                         errno=errno.EINVAL, source="/dev/loop3")
    assert status_for(refused) == grpc.StatusCode.INVALID_ARGUMENT
    gone = LoopError("LOOP_SET_CAPACITY on /dev/loop3 failed", device="/dev/loop3",
                     errno=errno.ENXIO)
    assert status_for(gone) == grpc.StatusCode.FAILED_PRECONDITION
    odd = LoopError("?", device="/dev/loop3", errno=None)
    assert status_for(odd) == grpc.StatusCode.INTERNAL


def test_pool_catalog_and_value_errors_are_known_conditions():
    assert status_for(CatalogFull("catalog /p/catalog.db: full")) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(CatalogError("catalog /p/catalog.db: disk I/O error")) == \
        grpc.StatusCode.UNAVAILABLE
    assert status_for(PoolError("pool /p is a symlink")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(ValueError("bad size")) == grpc.StatusCode.INVALID_ARGUMENT
    assert errmap.translate(RuntimeError("a bug")) is None
    assert status_for(RuntimeError("a bug")) == grpc.StatusCode.INTERNAL
