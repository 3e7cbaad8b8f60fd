// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_stall_lp: a livepatch of every function of klptrace_stall that
 * holds a task, so that its transition waits for each held task the way the
 * livepatch core treats that task's kind of sleep. Its callbacks only say
 * when they run: post_patch, after the stall has ended.
 *
 * The new functions hold nothing: a read returns "patched" at once, and the
 * kthreads' functions return. A reader that switched and whose read was
 * restarted (after the fake signal) therefore reads "patched".
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/livepatch.h>
#include <linux/module.h>

#include "klptrace_state.h"

static int klptrace_stall_lp_pre_patch(struct klp_object *obj)
{
	klptrace_callback_info("pre_patch", obj);
	return 0;
}

static void klptrace_stall_lp_post_patch(struct klp_object *obj)
{
	klptrace_callback_info("post_patch", obj);
}

static void klptrace_stall_lp_pre_unpatch(struct klp_object *obj)
{
	klptrace_callback_info("pre_unpatch", obj);
}

static void klptrace_stall_lp_post_unpatch(struct klp_object *obj)
{
	klptrace_callback_info("post_unpatch", obj);
}

static const char patched[] = "patched\n";

static ssize_t livepatch_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	return simple_read_from_buffer(buf, count, ppos, patched, sizeof(patched) - 1);
}

static void livepatch_kthread_wait(void)
{
}

static struct klp_func stall_funcs[] = {
	{ .old_name = "klptrace_stall_read_interruptible", .new_func = livepatch_read },
	{ .old_name = "klptrace_stall_read_uninterruptible", .new_func = livepatch_read },
	{ .old_name = "klptrace_stall_kthread_wait", .new_func = livepatch_kthread_wait },
	{ .old_name = "klptrace_stall_spin", .new_func = livepatch_kthread_wait },
	{ }
};

static struct klp_object objs[] = {
	{
		.name = "klptrace_stall",
		.funcs = stall_funcs,
		.callbacks = {
			.pre_patch = klptrace_stall_lp_pre_patch,
			.post_patch = klptrace_stall_lp_post_patch,
			.pre_unpatch = klptrace_stall_lp_pre_unpatch,
			.post_unpatch = klptrace_stall_lp_post_unpatch,
		},
	},
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init klptrace_stall_lp_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit klptrace_stall_lp_exit(void)
{
}

module_init(klptrace_stall_lp_init);
module_exit(klptrace_stall_lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace: livepatch of klptrace_stall's holding functions");
