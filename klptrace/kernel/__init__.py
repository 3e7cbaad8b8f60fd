"""The live kernel: what reads or writes /sys, /proc, /dev/kmsg and modules.

kernelfs is the one writer of kernel files; kmod loads and unloads modules
through the kernel actor, a child process set up by child; wedge records
whether the kernel is wedged; kmsg reads and writes the kernel log; settings
saves and restores the kernel knobs klptrace changes; sysinfo describes the
running kernel.
"""
