"""Recording with BPF: what needs bcc, root and a kernel with kprobes.

probes compiles and attaches klptrace's BPF program; recorder collects its
events; btf and elf read the kernel's and the modules' type and symbol
information the program is built against.
"""
