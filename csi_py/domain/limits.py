"""The CSI spec's size limits: strings 128 bytes, maps 4 KiB in total."""

MAX_STRING_BYTES = 128
MAX_MAP_BYTES = 4096
