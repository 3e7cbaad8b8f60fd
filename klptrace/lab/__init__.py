"""The kernel lab: stock Debian kernels in a cache, modules built for them, a QEMU guest.

It knows nothing of livepatch: it fetches and unpacks kernels (kernels,
archive), builds a kbuild tree against their headers (build, in a suite's
build root where the host lacks the compiler: buildroot), and boots one to run
a command (vm). It imports nothing of klptrace but errors.
"""
