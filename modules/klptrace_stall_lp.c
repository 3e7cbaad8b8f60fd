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
 *
 * It also patches klptrace_stall_gate, whose load during the transition
 * pauses it: that object's pre_patch callback waits, under klp_mutex, while
 * `hold_gate` is set (see klptrace_stall_gate.c). `gate_waiting` says when
 * it waits. The wait gives up after GATE_TIMEOUT, well before the hung task
 * detector's default of 120 s would report the blocked transition work.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/jiffies.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/wait.h>

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

#define GATE_TIMEOUT (60 * HZ)

static DECLARE_WAIT_QUEUE_HEAD(gate_wq);
static bool hold_gate = true;
static int gate_waiting;

static int klptrace_stall_lp_set_gate(const char *val, const struct kernel_param *kp)
{
	int ret = param_set_bool(val, kp);

	if (!ret)
		wake_up_all(&gate_wq);
	return ret;
}

static const struct kernel_param_ops gate_ops = {
	.set = klptrace_stall_lp_set_gate,
	.get = param_get_bool,
};

module_param_cb(hold_gate, &gate_ops, &hold_gate, 0644);
MODULE_PARM_DESC(hold_gate, "pause the transition while klptrace_stall_gate loads (default Y)");
module_param(gate_waiting, int, 0444);
MODULE_PARM_DESC(gate_waiting, "1 while the transition is paused (read-only)");

/* Runs from klp_module_coming(), which holds klp_mutex: no try runs meanwhile. */
static int klptrace_stall_lp_gate_pre_patch(struct klp_object *obj)
{
	klptrace_callback_info("pre_patch", obj);
	WRITE_ONCE(gate_waiting, 1);
	wait_event_killable_timeout(gate_wq, !READ_ONCE(hold_gate), GATE_TIMEOUT);
	WRITE_ONCE(gate_waiting, 0);
	return 0;
}

static int gate_fn(void)
{
	return 0;
}

static struct klp_func gate_funcs[] = {
	{ .old_name = "klptrace_stall_gate_fn", .new_func = gate_fn },
	{ }
};

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
	{
		.name = "klptrace_stall_gate",
		.funcs = gate_funcs,
		.callbacks = {
			.pre_patch = klptrace_stall_lp_gate_pre_patch,
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
