// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_lp2: a second livepatch, on vmlinux only, with all four
 * callbacks. replace=1 makes it an atomic-replace patch: enabling it
 * replaces every livepatch enabled before it.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

#include "klptrace_state.h"

static int replace;
module_param(replace, int, 0644);
MODULE_PARM_DESC(replace, "atomic replace: replace all earlier livepatches (default 0)");

static int klptrace_lp2_pre_patch(struct klp_object *obj)
{
	klptrace_callback_info("pre_patch", obj);
	return 0;
}

static void klptrace_lp2_post_patch(struct klp_object *obj)
{
	klptrace_callback_info("post_patch", obj);
}

static void klptrace_lp2_pre_unpatch(struct klp_object *obj)
{
	klptrace_callback_info("pre_unpatch", obj);
}

static void klptrace_lp2_post_unpatch(struct klp_object *obj)
{
	klptrace_callback_info("post_unpatch", obj);
}

static int livepatch2_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s: this has been live patched\n", KBUILD_MODNAME);
	return 0;
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch2_cmdline_proc_show },
	{ }
};

static struct klp_object objs[] = {
	{
		.name = NULL,
		.funcs = vmlinux_funcs,
		.callbacks = {
			.pre_patch = klptrace_lp2_pre_patch,
			.post_patch = klptrace_lp2_post_patch,
			.pre_unpatch = klptrace_lp2_pre_unpatch,
			.post_unpatch = klptrace_lp2_post_unpatch,
		},
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	/* .replace is set from the parameter in init */
};

static int __init klptrace_lp2_init(void)
{
	patch.replace = replace;
	return klp_enable_patch(&patch);
}

static void __exit klptrace_lp2_exit(void)
{
}

module_init(klptrace_lp2_init);
module_exit(klptrace_lp2_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace: second livepatch, atomic replace by parameter");
