/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The words the kernel selftests print for a klp_object's module state, so
 * that the callbacks' dmesg lines read like test-callbacks.sh expects.
 */
#ifndef KLPTRACE_STATE_H
#define KLPTRACE_STATE_H

#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/printk.h>

static inline const char *klptrace_mod_state(const struct module *mod)
{
	switch (mod->state) {
	case MODULE_STATE_LIVE:
		return "[MODULE_STATE_LIVE] Normal state";
	case MODULE_STATE_COMING:
		return "[MODULE_STATE_COMING] Full formed, running module_init";
	case MODULE_STATE_GOING:
		return "[MODULE_STATE_GOING] Going away";
	case MODULE_STATE_UNFORMED:
		return "[MODULE_STATE_UNFORMED] Still setting up";
	}
	return "[?] unknown state";
}

/* One dmesg line per callback: "<livepatch>: <role>_callback: <object>[ -> <state>]" */
#define klptrace_callback_info(role, obj)					\
do {										\
	if ((obj)->mod)								\
		pr_info("%s_callback: %s -> %s\n", role, (obj)->mod->name,	\
			klptrace_mod_state((obj)->mod));			\
	else									\
		pr_info("%s_callback: vmlinux\n", role);			\
} while (0)

#endif
