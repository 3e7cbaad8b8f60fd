// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_stall_gate: a module that klptrace_stall_lp also patches, so that
 * loading it during klptrace_stall_lp's transition pauses that transition's
 * clock, for as long as a test needs to look at the stall.
 *
 * The livepatch core tries to complete a transition from a delayed work,
 * klp_transition_work_fn(), which takes klp_mutex first (kernel/livepatch/
 * transition.c); every SIGNALS_TIMEOUT (15) tries it signals the tasks that
 * still block. A module that a livepatch in transition patches is handled at
 * load by klp_module_coming() (kernel/livepatch/core.c), which holds
 * klp_mutex while it runs that patch's pre_patch callback for the module's
 * klp_object. klptrace_stall_lp's pre_patch callback for this object waits
 * while its `hold_gate` parameter is set: meanwhile no try runs, no signal
 * round is sent, and the blocked tasks stay as they are.
 *
 * The module itself only has the function the patch changes; it is not a
 * workload of any scenario.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>

/* patched by klptrace_stall_lp (a klp_object needs at least one klp_func) */
noinline int klptrace_stall_gate_fn(void)
{
	return 0;
}
EXPORT_SYMBOL_GPL(klptrace_stall_gate_fn);

static int __init klptrace_stall_gate_init(void)
{
	return klptrace_stall_gate_fn();
}

static void __exit klptrace_stall_gate_exit(void)
{
}

module_init(klptrace_stall_gate_init);
module_exit(klptrace_stall_gate_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace: a module whose load pauses klptrace_stall_lp's transition");
