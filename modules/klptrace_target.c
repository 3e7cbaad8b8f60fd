// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_target: an idle module that a livepatch targets.
 *
 * /sys/module/klptrace_target/parameters/answer is read through
 * klptrace_target_answer_get(), which klptrace_lp patches, so the patched
 * behaviour can be seen from user space.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kernel.h>

static noinline int klptrace_target_answer_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%s: unpatched\n", KBUILD_MODNAME);
}

static const struct kernel_param_ops answer_ops = {
	.get = klptrace_target_answer_get,
};
module_param_cb(answer, &answer_ops, NULL, 0444);
MODULE_PARM_DESC(answer, "reads 'unpatched' until a livepatch replaces its getter");

static int __init klptrace_target_init(void)
{
	pr_info("%s\n", __func__);
	return 0;
}

static void __exit klptrace_target_exit(void)
{
	pr_info("%s\n", __func__);
}

module_init(klptrace_target_init);
module_exit(klptrace_target_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("klptrace: idle livepatch target module");
