"""The domain: csi-py's model (volumes, snapshots, attachments: frozen dataclasses),
units, the CSI spec's limits, snapshot id forms and the domain errors.

The lowest layer: it imports nothing else of csi_py, and state, config, linux, core
and rpc all import it (tests/unit/test_import_graph.py checks the arrows).
"""
