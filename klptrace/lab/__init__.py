"""The kernel lab: stock Debian kernels in a cache, modules built for them, a QEMU guest.

It knows nothing of livepatch: it fetches and unpacks kernels (kernels: a
spec to a release; specs: what --kernel names; unpacked: the Kernel in the
cache; archive: apt), builds a kbuild tree against their headers (build, in
a suite's build root where the host lacks the compiler: buildroot), and boots
one to run a command (vm: the run; accel: KVM or TCG; vng: the vng command line; pump:
the guest's output; stop: signals and stopping its processes). It imports
nothing of klptrace but errors and the /proc reader.
"""
