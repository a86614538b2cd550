"""The controller service's core: one object that wires sizing, volumes, expansion and
attachments together over one catalog, pool and host. It holds no logic of its own:
callers reach each entry point on the part that owns it (``controller.volumes``,
``.expansion``, ``.attachments``, ``.space``)."""

from __future__ import annotations

from csi_py.config import Config
from csi_py.core.attachments import Attachments
from csi_py.core.capacity import Space
from csi_py.core.capture import Capturer
from csi_py.core.expansion import Expansion
from csi_py.core.locks import KeyedTryLock
from csi_py.core.pool import Pool
from csi_py.core.sources import Sources
from csi_py.core.volumes import Volumes
from csi_py.linux import Host
from csi_py.state.catalog import Catalog
from csi_py.state.records import Records


class ControllerCore:
    """The CSI controller service's logic, over a catalog, a pool and a host."""

    def __init__(
        self, config: Config, catalog: Catalog, pool: Pool, host: Host, locks: KeyedTryLock
    ) -> None:
        self.config = config
        self.capturer = Capturer(catalog, pool, host)
        records = Records(pool.records_dir)
        self.space = Space(config, catalog, pool)
        sources = Sources(config, catalog, pool, locks, self.capturer, records)
        self.volumes = Volumes(config, catalog, pool, host, locks, self.space, sources, records)
        self.expansion = Expansion(self.volumes)
        self.attachments = Attachments(config, catalog, locks, self.space, self.volumes)
