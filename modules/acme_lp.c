// SPDX-License-Identifier: GPL-2.0
/*
 * acme_lp: a livepatch that is not one of klptrace's scenario modules, for
 * `klptrace trace` tests. Its callbacks have names unlike klptrace's, so
 * their roles must come from the klp_objects, not from the names. Two
 * objects: vmlinux (/proc/loadavg) and klptrace_target. fail_prepare is what
 * the pre_patch callback (acme_prepare) returns.
 *
 * acme_prepare first checks its klp_object, and fails with pr_err(), which
 * printk.h declares __cold: gcc-14 moves everything after that check (the
 * error and the logging) out of line into acme_prepare.cold, as it does in
 * real livepatches, so klptrace's tests see a callback with a split part.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

#include "klptrace_state.h"

static int fail_prepare;
module_param(fail_prepare, int, 0644);
MODULE_PARM_DESC(fail_prepare, "returned by the pre_patch callback (default 0)");

static int acme_prepare(struct klp_object *obj)
{
	struct klp_func *func;
	int nr_funcs = 0;

	klp_for_each_func_static(obj, func)
		nr_funcs++;
	if (unlikely(!nr_funcs)) {
		pr_err("klp_object %s patches no function\n", obj->name ?: "vmlinux");
		return -EINVAL;
	}
	klptrace_callback_info("pre_patch", obj);
	return fail_prepare;
}

static void acme_activate(struct klp_object *obj)
{
	klptrace_callback_info("post_patch", obj);
}

static void acme_quiesce(struct klp_object *obj)
{
	klptrace_callback_info("pre_unpatch", obj);
}

static void acme_release(struct klp_object *obj)
{
	klptrace_callback_info("post_unpatch", obj);
}

static int acme_loadavg_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "0.00 0.00 0.00 1/1 1 acme_lp\n");
	return 0;
}

static int acme_answer_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s: patched\n", KBUILD_MODNAME);
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "loadavg_proc_show", .new_func = acme_loadavg_proc_show },
	{ }
};

static struct klp_func target_funcs[] = {
	{ .old_name = "klptrace_target_answer_get", .new_func = acme_answer_get },
	{ }
};

static struct klp_object objs[] = {
	{
		.name = NULL,
		.funcs = vmlinux_funcs,
		.callbacks = { .pre_patch = acme_prepare, .post_patch = acme_activate,
			       .pre_unpatch = acme_quiesce, .post_unpatch = acme_release },
	}, {
		.name = "klptrace_target",
		.funcs = target_funcs,
		.callbacks = { .pre_patch = acme_prepare, .post_patch = acme_activate,
			       .pre_unpatch = acme_quiesce, .post_unpatch = acme_release },
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init acme_lp_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit acme_lp_exit(void)
{
}

module_init(acme_lp_init);
module_exit(acme_lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace tests: a third-party style livepatch");
