"""Running livepatch work in the lab's guest: what `run --vm` stages, boots and reads back.

lab/ boots a kernel and knows nothing of livepatch; this package holds what
does: the vCPUs a kernel's transitions allow, the modules and scenarios staged
for the guest, and the typed stream of results between guest and host.
"""
