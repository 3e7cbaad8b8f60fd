// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_busy: a target module whose work function can be made to stay
 * inside itself, so that a livepatch which patches that function cannot
 * switch the kworker running it and the transition stalls.
 *
 * block_transition=Y at load time keeps the worker sleeping in
 * klptrace_busy_work_func() until the parameter is cleared (it is writable at
 * run time) or the module is unloaded.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/completion.h>
#include <linux/delay.h>
#include <linux/module.h>
#include <linux/workqueue.h>

static bool block_transition;
module_param(block_transition, bool, 0644);
MODULE_PARM_DESC(block_transition, "keep the worker in the patched function (default N)");

static DECLARE_COMPLETION(work_started);

static noinline void klptrace_busy_work_func(struct work_struct *work)
{
	pr_info("%s enter\n", __func__);
	complete(&work_started);

	/* Sleep, not spin: the stack check must find us on this function. */
	while (READ_ONCE(block_transition))
		msleep(20);

	pr_info("%s exit\n", __func__);
}

static DECLARE_WORK(work, klptrace_busy_work_func);

static int __init klptrace_busy_init(void)
{
	pr_info("%s\n", __func__);
	schedule_work(&work);
	/*
	 * Return only once the worker is inside klptrace_busy_work_func(), so
	 * a livepatch loaded after us always finds it there.
	 */
	wait_for_completion(&work_started);
	return 0;
}

static void __exit klptrace_busy_exit(void)
{
	WRITE_ONCE(block_transition, false);
	flush_work(&work);
	pr_info("%s\n", __func__);
}

module_init(klptrace_busy_init);
module_exit(klptrace_busy_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace: livepatch target that can stall a transition");
