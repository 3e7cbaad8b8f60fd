// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_lp: a livepatch with three klp_objects (vmlinux, klptrace_target,
 * klptrace_busy), each with all four callbacks.
 *
 * Each object patches a real function:
 *   vmlinux          cmdline_proc_show()          -> /proc/cmdline
 *   klptrace_target  klptrace_target_answer_get() -> .../klptrace_target/parameters/answer
 *   klptrace_busy    klptrace_busy_work_func()    -> the function the busy worker sleeps in
 *
 * pre_patch_ret is returned by every pre_patch callback. It is writable at run
 * time, so a later module_coming can be made to fail.
 *
 * oops=<role> (pre_patch, post_patch, pre_unpatch or post_unpatch) makes that
 * callback dereference NULL after printing its line: the fault a livepatch
 * developer debugs. The task running it dies holding the livepatch core's
 * mutex, which wedges the core until reboot.
 *
 * sleep=<role> makes that callback sleep sleep_ms (default 3000) after printing
 * its line, with `sleeping` reading 1 meanwhile: the syscall that ran it (an
 * insmod, an rmmod, a write to `enabled`) is then in flight for that long, a
 * point klptrace's signal tests send their signal at.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/delay.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <linux/workqueue.h>

#include "klptrace_state.h"

static int pre_patch_ret;
module_param(pre_patch_ret, int, 0644);
MODULE_PARM_DESC(pre_patch_ret, "value every pre_patch callback returns (default 0)");

static char *oops = "";
module_param(oops, charp, 0644);
MODULE_PARM_DESC(oops, "the callback that dereferences NULL (default: none)");

static char *sleep = "";
module_param(sleep, charp, 0644);
MODULE_PARM_DESC(sleep, "the callback that sleeps sleep_ms (default: none)");

static int sleep_ms = 3000;
module_param(sleep_ms, int, 0644);
MODULE_PARM_DESC(sleep_ms, "how long the sleep callback sleeps, in ms (default 3000)");

static int sleeping;
module_param(sleeping, int, 0444);
MODULE_PARM_DESC(sleeping, "1 while a callback sleeps (read-only)");

/* never set; read with READ_ONCE so that the compiler keeps the faulting store */
static int *klptrace_lp_nowhere;

/* a macro, so that the faulting instruction is the callback's own (its RIP) */
#define klptrace_lp_maybe_oops(role)					\
do {									\
	if (!strcmp(oops, role))					\
		WRITE_ONCE(*READ_ONCE(klptrace_lp_nowhere), 1);	\
} while (0)

static void klptrace_lp_maybe_sleep(const char *role)
{
	if (strcmp(sleep, role))
		return;
	WRITE_ONCE(sleeping, 1);
	msleep(max(READ_ONCE(sleep_ms), 0));
	WRITE_ONCE(sleeping, 0);
}

static int klptrace_lp_pre_patch(struct klp_object *obj)
{
	klptrace_callback_info("pre_patch", obj);
	klptrace_lp_maybe_oops("pre_patch");
	klptrace_lp_maybe_sleep("pre_patch");
	return pre_patch_ret;
}

static void klptrace_lp_post_patch(struct klp_object *obj)
{
	klptrace_callback_info("post_patch", obj);
	klptrace_lp_maybe_oops("post_patch");
	klptrace_lp_maybe_sleep("post_patch");
}

static void klptrace_lp_pre_unpatch(struct klp_object *obj)
{
	klptrace_callback_info("pre_unpatch", obj);
	klptrace_lp_maybe_oops("pre_unpatch");
	klptrace_lp_maybe_sleep("pre_unpatch");
}

static void klptrace_lp_post_unpatch(struct klp_object *obj)
{
	klptrace_callback_info("post_unpatch", obj);
	klptrace_lp_maybe_oops("post_unpatch");
	klptrace_lp_maybe_sleep("post_unpatch");
}

static int livepatch_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s: this has been live patched\n", KBUILD_MODNAME);
	return 0;
}

static int livepatch_answer_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s: patched\n", KBUILD_MODNAME);
}

static void livepatch_busy_work_func(struct work_struct *work)
{
	pr_info("%s: patched worker ran\n", __func__);
}

static struct klp_func vmlinux_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = livepatch_cmdline_proc_show },
	{ }
};

static struct klp_func target_funcs[] = {
	{ .old_name = "klptrace_target_answer_get", .new_func = livepatch_answer_get },
	{ }
};

static struct klp_func busy_funcs[] = {
	{ .old_name = "klptrace_busy_work_func", .new_func = livepatch_busy_work_func },
	{ }
};

#define KLPTRACE_CALLBACKS {				\
	.pre_patch = klptrace_lp_pre_patch,		\
	.post_patch = klptrace_lp_post_patch,		\
	.pre_unpatch = klptrace_lp_pre_unpatch,		\
	.post_unpatch = klptrace_lp_post_unpatch,	\
}

static struct klp_object objs[] = {
	{ .name = NULL, .funcs = vmlinux_funcs, .callbacks = KLPTRACE_CALLBACKS },
	{ .name = "klptrace_target", .funcs = target_funcs, .callbacks = KLPTRACE_CALLBACKS },
	{ .name = "klptrace_busy", .funcs = busy_funcs, .callbacks = KLPTRACE_CALLBACKS },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init klptrace_lp_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit klptrace_lp_exit(void)
{
}

module_init(klptrace_lp_init);
module_exit(klptrace_lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace: livepatch with callbacks on vmlinux and two modules");
