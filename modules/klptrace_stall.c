// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_stall: a target module whose functions keep a task inside them,
 * each task in a different kind of sleep, so that a livepatch of those
 * functions (klptrace_stall_lp) stalls its transition in each of the ways the
 * livepatch core treats differently (kernel/livepatch/transition.c).
 *
 * /sys/kernel/debug/klptrace_stall/interruptible
 *	A read sleeps TASK_INTERRUPTIBLE in klptrace_stall_read_interruptible()
 *	until hold_interruptible is cleared, or a signal interrupts it: the
 *	livepatch core's fake signal too (set_notify_signal() wakes
 *	TASK_INTERRUPTIBLE sleepers and makes signal_pending() true), after
 *	which the task switches on its way back to user space and the restarted
 *	read runs whichever function its new patch state gives it.
 * /sys/kernel/debug/klptrace_stall/uninterruptible
 *	A read sleeps TASK_KILLABLE in klptrace_stall_read_uninterruptible()
 *	until hold_uninterruptible is cleared. /proc shows it as D; the fake
 *	signal neither wakes it nor ends its wait (signal_pending_state() of a
 *	killable sleep counts only a fatal signal), while SIGKILL still does, so
 *	a reader left behind can always be killed.
 * kthread=Y (at load)
 *	A kthread, klptrace_stalld, sleeps TASK_INTERRUPTIBLE in
 *	klptrace_stall_kthread_wait() and, woken while hold_kthread is set,
 *	counts the wake-up in `wakeups` and sleeps there again: the wake-up
 *	klp_send_signals() gives kthreads does not move it.
 * spin=Y (at load)
 *	A kthread, klptrace_spind, runs in klptrace_stall_spin(), calling
 *	cond_resched(), until hold_spin is cleared.
 *
 * Clearing a hold_* parameter wakes what it holds. `sleepers` counts the
 * tasks inside those functions now, so that a caller can wait for a reader
 * to be in place instead of sleeping.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/debugfs.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/wait.h>

static DECLARE_WAIT_QUEUE_HEAD(klptrace_stall_wq);
static struct task_struct *sleeper_task, *spin_task;
static atomic_t sleepers = ATOMIC_INIT(0);

static bool hold_interruptible = true;
static bool hold_uninterruptible = true;
static bool hold_kthread = true;
static bool hold_spin = true;

/* Setting a hold_* parameter wakes whatever waits for it to be cleared. */
static int klptrace_stall_set_hold(const char *val, const struct kernel_param *kp)
{
	int ret = param_set_bool(val, kp);

	if (ret)
		return ret;
	wake_up_all(&klptrace_stall_wq);
	if (sleeper_task)
		wake_up_process(sleeper_task);
	return 0;
}

static const struct kernel_param_ops hold_ops = {
	.set = klptrace_stall_set_hold,
	.get = param_get_bool,
};

module_param_cb(hold_interruptible, &hold_ops, &hold_interruptible, 0644);
MODULE_PARM_DESC(hold_interruptible, "keep readers of interruptible waiting (default Y)");
module_param_cb(hold_uninterruptible, &hold_ops, &hold_uninterruptible, 0644);
MODULE_PARM_DESC(hold_uninterruptible, "keep readers of uninterruptible waiting (default Y)");
module_param_cb(hold_kthread, &hold_ops, &hold_kthread, 0644);
MODULE_PARM_DESC(hold_kthread, "keep klptrace_stalld in its function (default Y)");
module_param_cb(hold_spin, &hold_ops, &hold_spin, 0644);
MODULE_PARM_DESC(hold_spin, "keep klptrace_spind spinning in its function (default Y)");

static bool kthread;
module_param(kthread, bool, 0444);
MODULE_PARM_DESC(kthread, "start klptrace_stalld at load (default N)");

static bool spin;
module_param(spin, bool, 0444);
MODULE_PARM_DESC(spin, "start klptrace_spind at load (default N)");

static int wakeups;
module_param(wakeups, int, 0444);
MODULE_PARM_DESC(wakeups, "times klptrace_stalld was woken while held (read-only)");

static int klptrace_stall_get_sleepers(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%d\n", atomic_read(&sleepers));
}

static const struct kernel_param_ops sleepers_ops = {
	.get = klptrace_stall_get_sleepers,
};

module_param_cb(sleepers, &sleepers_ops, NULL, 0444);
MODULE_PARM_DESC(sleepers, "tasks inside a holding function now (read-only)");

static const char released[] = "released\n";

static noinline ssize_t klptrace_stall_read_interruptible(struct file *file, char __user *buf,
							  size_t count, loff_t *ppos)
{
	int ret;

	if (*ppos)
		return 0;
	atomic_inc(&sleepers);
	ret = wait_event_interruptible(klptrace_stall_wq, !READ_ONCE(hold_interruptible));
	atomic_dec(&sleepers);
	if (ret)
		return ret;	/* -ERESTARTSYS: the read is restarted after the signal */
	return simple_read_from_buffer(buf, count, ppos, released, sizeof(released) - 1);
}

static noinline ssize_t klptrace_stall_read_uninterruptible(struct file *file,
							    char __user *buf, size_t count,
							    loff_t *ppos)
{
	int ret;

	if (*ppos)
		return 0;
	atomic_inc(&sleepers);
	ret = wait_event_killable(klptrace_stall_wq, !READ_ONCE(hold_uninterruptible));
	atomic_dec(&sleepers);
	if (ret)
		return ret;	/* only SIGKILL ends this wait early */
	return simple_read_from_buffer(buf, count, ppos, released, sizeof(released) - 1);
}

/* .owner: an open file holds the module, so rmmod says EBUSY rather than waiting. */
static const struct file_operations interruptible_fops = {
	.owner = THIS_MODULE,
	.read = klptrace_stall_read_interruptible,
	.llseek = default_llseek,
};

static const struct file_operations uninterruptible_fops = {
	.owner = THIS_MODULE,
	.read = klptrace_stall_read_uninterruptible,
	.llseek = default_llseek,
};

static DECLARE_COMPLETION(sleeper_in);
static DECLARE_COMPLETION(spin_in);

static noinline void klptrace_stall_kthread_wait(void)
{
	atomic_inc(&sleepers);
	complete(&sleeper_in);
	while (READ_ONCE(hold_kthread) && !kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (READ_ONCE(hold_kthread) && !kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
		/* woken for nothing (klp_send_signals(), say): sleep here again */
		if (READ_ONCE(hold_kthread))
			WRITE_ONCE(wakeups, READ_ONCE(wakeups) + 1);
	}
	atomic_dec(&sleepers);
}

static noinline void klptrace_stall_spin(void)
{
	atomic_inc(&sleepers);
	complete(&spin_in);
	while (READ_ONCE(hold_spin) && !kthread_should_stop())
		cond_resched();
	atomic_dec(&sleepers);
}

/* Once out of the held function: sleep, outside it, until the module goes. */
static void klptrace_stall_idle(void)
{
	while (!kthread_should_stop()) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (!kthread_should_stop())
			schedule();
		__set_current_state(TASK_RUNNING);
	}
}

static int klptrace_stall_sleeper(void *data)
{
	klptrace_stall_kthread_wait();
	klptrace_stall_idle();
	return 0;
}

static int klptrace_stall_spinner(void *data)
{
	klptrace_stall_spin();
	klptrace_stall_idle();
	return 0;
}

static struct dentry *dir;

static int __init klptrace_stall_init(void)
{
	struct task_struct *t;

	pr_info("%s\n", __func__);
	dir = debugfs_create_dir(KBUILD_MODNAME, NULL);
	debugfs_create_file("interruptible", 0400, dir, NULL, &interruptible_fops);
	debugfs_create_file("uninterruptible", 0400, dir, NULL, &uninterruptible_fops);
	if (kthread) {
		t = kthread_run(klptrace_stall_sleeper, NULL, "klptrace_stalld");
		if (IS_ERR(t))
			goto fail;
		sleeper_task = t;
		/* a livepatch loaded after us finds the kthread in its function */
		wait_for_completion(&sleeper_in);
	}
	if (spin) {
		t = kthread_run(klptrace_stall_spinner, NULL, "klptrace_spind");
		if (IS_ERR(t))
			goto fail;
		spin_task = t;
		wait_for_completion(&spin_in);
	}
	return 0;
fail:
	if (sleeper_task)
		kthread_stop(sleeper_task);
	debugfs_remove_recursive(dir);
	return PTR_ERR(t);
}

static void __exit klptrace_stall_exit(void)
{
	/* no reader is left (each holds the module); the kthreads are stopped */
	if (sleeper_task)
		kthread_stop(sleeper_task);
	if (spin_task)
		kthread_stop(spin_task);
	debugfs_remove_recursive(dir);
	pr_info("%s\n", __func__);
}

module_init(klptrace_stall_init);
module_exit(klptrace_stall_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace: livepatch target that stalls a transition in each kind of sleep");
