"""Shared test settings.

tests/linux_kernel/ holds the kernel tests; they run inside the lab guest (one boot
for all of them, started by test_kernel_vm.py), never directly on the host.
"""

import os

collect_ignore = [] if os.environ.get("KLPTRACE_IN_GUEST") else ["linux_kernel"]
