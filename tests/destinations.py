"""Destination URLs spelled to slip past an SSRF check, shared by the egress and API tests.

Each is refused when a subscription or job is created and again when a connection is made.
"""

from __future__ import annotations

LONG_LABEL = "a" * 64 + ".example.com"
LONG_NAME = ".".join(["a" * 63] * 3 + ["b" * 62])  # 254 characters
assert len(LONG_NAME) == 254

# id: (host as written in the URL, why it is refused). Every literal here is 127.0.0.1 or
# 169.254.169.254; the reason is matched as the start of the refusal.
ODD_LITERALS: dict[str, tuple[str, str]] = {
    "trailing-dot": ("127.0.0.1.", "loopback"),
    "metadata-trailing-dot": ("169.254.169.254.", "cloud metadata"),
    "decimal-trailing-dot": ("2130706433.", "loopback"),
    "hex-trailing-dot": ("0x7f000001.", "loopback"),
    "octal": ("0177.0.0.1", "loopback"),
    "short": ("127.1", "loopback"),
    "percent-encoded": ("%31%32%37.0.0.1", "loopback"),
    "mapped-v6-dotted": ("[::ffff:127.0.0.1]", "loopback"),
    "mapped-v6-hex": ("[::ffff:7f00:1]", "loopback"),
    "compatible-v6": ("[::127.0.0.1]", "loopback"),
    "nat64-metadata": ("[64:ff9b::a9fe:a9fe]", "cloud metadata"),
}

# id: (host[:port] as written in the URL, why it is refused)
INVALID: dict[str, tuple[str, str]] = {
    "port-0": ("hooks.example.com:0", "port must be between 1 and 65535"),
    "port-65536": ("hooks.example.com:65536", "port must be between 1 and 65535"),
    "port-99999": ("hooks.example.com:99999", "port must be between 1 and 65535"),
    "label-64": (LONG_LABEL, "a host name label is longer than 63 characters"),
    "name-254": (LONG_NAME, "host name is longer than 253 characters"),
}

ALL = {**ODD_LITERALS, **INVALID}
