"""klptrace: record the Linux kernel livepatch core with BPF and check it."""

__version__ = "0.1.0"
