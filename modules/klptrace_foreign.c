// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace_foreign: plays a livepatch that klptrace did not load (a
 * distribution's, say), so the tests can check that klptrace leaves it alone.
 * It patches version_proc_show() (/proc/version) and has no callbacks.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static int foreign_version_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s: this has been live patched\n", KBUILD_MODNAME);
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "version_proc_show", .new_func = foreign_version_proc_show },
	{ }
};

static struct klp_object objs[] = {
	{ .name = NULL, .funcs = funcs },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init klptrace_foreign_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit klptrace_foreign_exit(void)
{
}

module_init(klptrace_foreign_init);
module_exit(klptrace_foreign_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("klptrace tests: a livepatch klptrace did not load");
