"""Recording with BPF: what needs bcc, root and a kernel with kprobes.

compiler builds klptrace's BPF program (the one module that imports bcc);
kprobes writes the kprobe events on livepatch modules and checks that the
kernel armed them; probes attaches the program, reads its events and detaches
it; recorder collects the events; btf and elf read the kernel's and the
modules' type and symbol information the program is built against.
"""
