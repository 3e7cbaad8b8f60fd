// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_shadow_target: the module whose objects the shadow variables of
 * klptrace_shadow_lp1/2/3 hang on, and whose function they patch.
 *
 * It has KLPTRACE_SHADOW_ITEMS items (klptrace_shadow.h). A shadow variable is
 * keyed by an object's address and an id (kernel/livepatch/shadow.c), so the
 * items are static: their addresses do not change while the module is loaded.
 * The livepatches reach them through klptrace_shadow_target_item(), an
 * exported symbol; the livepatch modules therefore hold a reference on this
 * module, which loads first and unloads last.
 *
 * /sys/module/klptrace_shadow_target/parameters/items
 *	Read through klptrace_shadow_target_items_get(), which the livepatches
 *	replace: "unpatched" here, the livepatch's state and shadow variables
 *	there.
 * /sys/module/klptrace_shadow_target/parameters/shadows
 *	How many shadow variables hang on the items now, summed from the items'
 *	`shadowed` counts (which the livepatches' shadow constructor and
 *	destructor keep). It reads 0 after a livepatch tore its state down, and
 *	KLPTRACE_SHADOW_ITEMS after one leaked its variables (leak=Y): shadow.c
 *	never frees a variable by itself, not even when the module that
 *	allocated it is gone. Reading it calls no shadow function, so it adds no
 *	event to a recording.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

#include "klptrace_shadow.h"

static struct klptrace_shadow_item items[KLPTRACE_SHADOW_ITEMS] = {
	{ .index = 0 }, { .index = 1 }, { .index = 2 },
};

struct klptrace_shadow_item *klptrace_shadow_target_item(unsigned int i)
{
	return i < ARRAY_SIZE(items) ? &items[i] : NULL;
}
EXPORT_SYMBOL_GPL(klptrace_shadow_target_item);

static noinline int klptrace_shadow_target_items_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s: unpatched\n", KBUILD_MODNAME);
}

static const struct kernel_param_ops items_ops = {
	.get = klptrace_shadow_target_items_get,
};
module_param_cb(items, &items_ops, NULL, 0444);
MODULE_PARM_DESC(items, "reads 'unpatched' until a klptrace_shadow_lp* replaces its getter");

static int klptrace_shadow_target_shadows_get(char *buf, const struct kernel_param *kp)
{
	unsigned int i;
	int n = 0;

	for (i = 0; i < ARRAY_SIZE(items); i++)
		n += atomic_read(&items[i].shadowed);
	return sysfs_emit(buf, "%d\n", n);
}

static const struct kernel_param_ops shadows_ops = {
	.get = klptrace_shadow_target_shadows_get,
};
module_param_cb(shadows, &shadows_ops, NULL, 0444);
MODULE_PARM_DESC(shadows, "how many shadow variables hang on the items now");

static int __init klptrace_shadow_target_init(void)
{
	u64 cookie = ktime_get_ns();
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(items); i++)
		items[i].cookie = cookie;
	pr_info("%s\n", __func__);
	return 0;
}

static void __exit klptrace_shadow_target_exit(void)
{
	pr_info("%s\n", __func__);
}

module_init(klptrace_shadow_target_init);
module_exit(klptrace_shadow_target_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace: target module whose items carry shadow variables");
