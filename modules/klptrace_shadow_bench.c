// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_shadow_bench: not a livepatch, and not a scenario module. A load
 * generator for bench/: it calls klp_shadow_get() as fast as it can, so that
 * a benchmark can measure how many shadow events per second the recorder
 * sustains, and whether it loses any.
 *
 * The shadow API is exported to every GPL module, livepatch or not
 * (kernel/livepatch/shadow.c, EXPORT_SYMBOL_GPL), so a plain module can use
 * it. At load it attaches one shadow variable to an object of its own with
 * klp_shadow_alloc(), so that each klp_shadow_get() finds something (the path
 * a livepatch's new code takes), and klp_shadow_free()s it at unload: it
 * leaves nothing in shadow.c's hash. klp_shadow_get() takes no lock (an RCU
 * walk of the hash), so the loop measures the probes' cost, not contention.
 *
 * /sys/module/klptrace_shadow_bench/parameters/run (write-only)
 *	Writing N calls klp_shadow_get() N times (N <= 100000000), in the
 *	writer's context, yielding the CPU every 1024 calls; the write returns
 *	when they are done.
 * /sys/module/klptrace_shadow_bench/parameters/calls, hits, last_ns (read-only)
 *	Calls made since load, how many found the variable (== calls unless the
 *	shadow API is broken), and how long the last run took in nanoseconds.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/sched.h>
#include <linux/slab.h>

/* a shadow id no other klptrace module uses ("klpb") */
#define KLPTRACE_SHADOW_BENCH_ID	0x6b6c7062UL
#define KLPTRACE_SHADOW_BENCH_MAX	100000000UL

static unsigned long bench_obj;	/* what the variable hangs on */
static unsigned long calls, hits;
static u64 last_ns;

module_param(calls, ulong, 0444);
MODULE_PARM_DESC(calls, "klp_shadow_get() calls made since load");
module_param(hits, ulong, 0444);
MODULE_PARM_DESC(hits, "of which found the shadow variable");
module_param(last_ns, ullong, 0444);
MODULE_PARM_DESC(last_ns, "duration of the last run, in nanoseconds");

static int klptrace_shadow_bench_run(const char *val, const struct kernel_param *kp)
{
	unsigned long n, i;
	u64 start;
	int ret;

	ret = kstrtoul(val, 0, &n);
	if (ret)
		return ret;
	if (n > KLPTRACE_SHADOW_BENCH_MAX)
		return -ERANGE;
	start = ktime_get_ns();
	for (i = 0; i < n; i++) {
		if (klp_shadow_get(&bench_obj, KLPTRACE_SHADOW_BENCH_ID))
			hits++;
		if ((i & 1023) == 1023)
			cond_resched();
	}
	last_ns = ktime_get_ns() - start;
	calls += n;
	return 0;
}

static const struct kernel_param_ops run_ops = {
	.set = klptrace_shadow_bench_run,
};
module_param_cb(run, &run_ops, NULL, 0200);
MODULE_PARM_DESC(run, "write N: call klp_shadow_get() N times");

static int __init klptrace_shadow_bench_init(void)
{
	if (!klp_shadow_alloc(&bench_obj, KLPTRACE_SHADOW_BENCH_ID, sizeof(u64), GFP_KERNEL,
			      NULL, NULL))
		return -ENOMEM;
	return 0;
}

static void __exit klptrace_shadow_bench_exit(void)
{
	klp_shadow_free(&bench_obj, KLPTRACE_SHADOW_BENCH_ID, NULL);
}

module_init(klptrace_shadow_bench_init);
module_exit(klptrace_shadow_bench_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace: calls klp_shadow_get() in a loop, for the recorder's benchmark");
