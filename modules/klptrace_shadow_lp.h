/* SPDX-License-Identifier: GPL-2.0 */
/*
 * klptrace_shadow_lp.h: the livepatch that klptrace_shadow_lp1.c, _lp2.c and
 * _lp3.c each build once, under their own name, with their own klp_state
 * version and cumulative flag:
 *
 *   module               state id  version  .replace
 *   klptrace_shadow_lp1  21        1        false  (A: sets the state up)
 *   klptrace_shadow_lp2  21        1        true   (B: takes A's state over)
 *   klptrace_shadow_lp3  21        2        true   (C: takes version 1 over)
 *
 * Each patches klptrace_shadow_target_items_get() of klptrace_shadow_target,
 * keeps its state in a klp_state (id KLPTRACE_SHADOW_STATE_ID, state->data a
 * struct klptrace_shadow_data) and hangs one shadow variable (id
 * KLPTRACE_SHADOW_VAR_ID) on each of the target's KLPTRACE_SHADOW_ITEMS items.
 * Parameter: leak=Y (writable at any time) makes the teardown skip freeing the
 * shadow variables, on purpose.
 *
 * The kernel facts this relies on:
 * - klp_enable_patch() (kernel/livepatch/core.c) first checks
 *   klp_is_patch_compatible() (kernel/livepatch/state.c): for every state of
 *   every installed patch, the new patch must declare it with a version >= the
 *   installed one, or, when it is not cumulative, may leave it out. Otherwise
 *   it prints "Livepatch patch (%s) is not compatible with the already
 *   installed livepatches." and returns -EINVAL before klp_init_patch(): no
 *   callback of the refused patch runs, its sysfs directory never appears and
 *   its module init fails (insmod reports "Invalid parameters").
 * - __klp_enable_patch() sets klp_transition_patch (klp_init_transition())
 *   before it calls the pre_patch callbacks, and klp_complete_transition()
 *   (kernel/livepatch/transition.c) calls post_patch/post_unpatch before it
 *   clears it; __klp_disable_patch() likewise for pre_unpatch. So
 *   klp_get_prev_state() works in all four callbacks: it returns the state of
 *   the newest installed patch before the one in transition (NULL when none),
 *   and WARNs when no transition runs.
 * - An atomic replace runs no callback of the replaced patches:
 *   klp_complete_transition() calls klp_unpatch_replaced_patches(), which
 *   only unpatches their functions, and klp_try_complete_transition() then
 *   klp_free_replaced_patches_async(), which drops their sysfs directories
 *   and their module reference (so they can be rmmod'ed; their exit does
 *   nothing). Whatever they set up is the successor's to keep and to free.
 * - post_unpatch also runs when a transition to a replacing patch is
 *   reversed; Documentation/livepatch/system-state.rst says to tell that from
 *   a disable by klp_get_prev_state(): a predecessor still installed owns the
 *   state, so it is left alone.
 * - Shadow variables (kernel/livepatch/shadow.c,
 *   Documentation/livepatch/shadow-vars.rst) live in one global hash keyed by
 *   <obj, id> until someone frees them: nothing frees them when the module
 *   that allocated them goes. klp_shadow_get_or_alloc() runs the constructor
 *   only for a new variable, and both constructor and destructor run under
 *   klp_shadow_lock with interrupts off (spin_lock_irqsave), so neither may
 *   sleep: ours only touch an atomic_t of the item.
 * - These callbacks only ever run inside a transition: each livepatch links
 *   against klptrace_shadow_target_item(), so the target is loaded before it
 *   and cannot go while it is loaded; klp_module_coming()/_going() never call
 *   them for it.
 * - The struct klp_state fields used (id, version, data), klp_patch.states and
 *   .replace, klp_callbacks and the shadow constructor/destructor types are
 *   the same on 6.1 and 7.3 (7.3 moved struct klp_callbacks to
 *   include/linux/livepatch_external.h, which livepatch.h includes), so
 *   nothing here depends on the kernel.
 *
 * What the callbacks do (each prints one line, by klptrace_callback_info(),
 * e.g. "klptrace_shadow_lp2: pre_patch_callback: klptrace_shadow_target ->
 * [MODULE_STATE_LIVE] Normal state", before its state and shadow calls):
 *   pre_patch    klp_get_state(own patch), klp_get_prev_state(); with no
 *                previous state: set up, i.e. allocate state->data and
 *                klp_shadow_get_or_alloc() one variable per item (constructor
 *                runs: `shadowed` +1 each); with one: take over, i.e. reuse
 *                its data and klp_shadow_get() each item's variable.
 *   post_patch   klp_get_state(); the state and the variables become this
 *                patch's (owner, version).
 *   pre_unpatch  klp_get_state(); the new getter stops relying on the state.
 *   post_unpatch klp_get_state(), klp_get_prev_state(); with none: tear
 *                down, i.e. klp_shadow_free_all(id, destructor) (destructor
 *                runs once per item: `shadowed` -1 each) unless leak=Y, and
 *                free state->data; with one: leave both to it.
 * The patched getter (a read of .../klptrace_shadow_target/parameters/items)
 * calls klp_shadow_get() once per item, outside any callback.
 *
 * Expected order of callbacks and state/shadow calls (T is
 * klptrace_shadow_target, loaded first and unloaded last; "x3" is once per
 * item; `shadows` is /sys/module/klptrace_shadow_target/parameters/shadows):
 *
 * (1) A state set up and torn down: insmod lp1; echo 0 > enabled; rmmod lp1
 *     lp1 pre_patch: get_state(lp1), get_prev_state -> none,
 *                    shadow get_or_alloc x3 (new)             shadows=3
 *     lp1 post_patch: get_state(lp1)
 *     lp1 pre_unpatch: get_state(lp1)
 *     lp1 post_unpatch: get_state(lp1), get_prev_state -> none,
 *                       shadow free_all                       shadows=0
 *
 * (2) Taken over by a cumulative replace patch: insmod lp1; insmod lp2
 *     lp1 pre_patch/post_patch as in (1)
 *     lp2 pre_patch: get_state(lp2), get_prev_state -> lp1's (version 1),
 *                    shadow get x3 (found)                    shadows=3
 *     lp2 post_patch: get_state(lp2)
 *     (lp1 is replaced: no pre_unpatch, no post_unpatch, no shadow call; its
 *      /sys/kernel/livepatch/klptrace_shadow_lp1 goes; rmmod lp1 then works)
 *     echo 0 > lp2's enabled: lp2 pre_unpatch, post_unpatch as lp1's in (1)
 *
 * (3) Compatible cumulative patches in turn: insmod lp2; insmod lp3;
 *     echo 0 > lp3's enabled; rmmod lp3 lp2
 *     lp2 pre_patch (set up, get_prev_state -> none), post_patch
 *     lp3 pre_patch: get_state(lp3), get_prev_state -> lp2's (version 1,
 *                    compatible: 2 >= 1), shadow get x3; post_patch
 *     (lp2 runs no unpatch callback)
 *     lp3 pre_unpatch; post_unpatch: get_prev_state -> none, free_all
 *
 * (4) An incompatible one refused: insmod lp3; insmod lp2 (fails)
 *     lp3 pre_patch (set up), post_patch
 *     insmod lp2: dmesg "livepatch: Livepatch patch (klptrace_shadow_lp2) is
 *     not compatible with the already installed livepatches.", -EINVAL;
 *     no callback, state or shadow call of lp2; lp3 stays enabled
 *     (lp1 is refused the same way: version 1 < 2)
 *     then lp3's teardown as in (3)
 *
 * (5) A shadow variable kept across an atomic replace, freed by the
 *     successor: (2) to its end, then rmmod lp2 lp1 T
 *     allocated by lp1 (get_or_alloc x3, constructor x3), found by lp2
 *     (get x3), freed by lp2 (free_all, destructor x3); shadows 3,3,0
 *
 * (6) A leak: insmod lp1; echo Y > /sys/module/klptrace_shadow_lp1/
 *     parameters/leak; echo 0 > enabled; rmmod lp1
 *     as (1) but post_unpatch makes no free_all: shadows=3 after rmmod lp1,
 *     the three <item, KLPTRACE_SHADOW_VAR_ID> variables allocated by lp1
 *     stay in shadow.c's hash with no module left to free them (and stay
 *     there after rmmod T, until reboot). A later set-up finds them through
 *     get_or_alloc (no constructor runs) and adopts them: `shadows` stays
 *     true, whether T is the same or was reloaded at the same addresses
 *     (told apart by the items' cookie), and the adopter's teardown frees
 *     them (shadows=0). klp_shadow_free_all() in a teardown also frees
 *     those left on the items of an earlier load of T at other addresses:
 *     the destructor never touches such an item (see its comment).
 */
#ifndef KLPTRACE_SHADOW_LP_H
#define KLPTRACE_SHADOW_LP_H

#if !defined(KLPTRACE_SHADOW_LP_VERSION) || !defined(KLPTRACE_SHADOW_LP_REPLACE)
#error "define KLPTRACE_SHADOW_LP_VERSION and KLPTRACE_SHADOW_LP_REPLACE first"
#endif

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "klptrace_shadow.h"
#include "klptrace_state.h"

static bool leak;
module_param(leak, bool, 0644);
MODULE_PARM_DESC(leak, "leave the shadow variables allocated at teardown, on purpose (default N)");

/* state->data: shared by every patch that takes the state over */
struct klptrace_shadow_data {
	unsigned int version;		/* of the patch that owns it now */
	bool active;			/* cleared by pre_unpatch */
	char owner[MODULE_NAME_LEN];
};

/* one shadow variable, on one item */
struct klptrace_shadow_var {
	struct klptrace_shadow_data *data;	/* the state it belongs to */
	u64 cookie;				/* its item's, when counted */
	unsigned int version;			/* of its last owner */
};

static struct klp_patch patch;
/* the variables found or made by pre_patch, for post_patch to stamp */
static struct klptrace_shadow_var *vars[KLPTRACE_SHADOW_ITEMS];

static struct klp_state *own_state(void)
{
	return klp_get_state(&patch, KLPTRACE_SHADOW_STATE_ID);
}

/* Under klp_shadow_lock, interrupts off: no sleeping. */
static int klptrace_shadow_ctor(void *obj, void *shadow_data, void *ctor_data)
{
	struct klptrace_shadow_item *item = obj;
	struct klptrace_shadow_var *var = shadow_data;

	var->data = ctor_data;
	var->cookie = item->cookie;
	var->version = KLPTRACE_SHADOW_LP_VERSION;
	atomic_inc(&item->shadowed);
	return 0;
}

/*
 * Under klp_shadow_lock, interrupts off: no sleeping. klp_shadow_free_all()
 * also hands it variables leaked under an earlier load of the target, whose
 * obj may be memory that load freed: obj is touched only when the variable
 * carries this load's cookie, read from a live item.
 */
static void klptrace_shadow_dtor(void *obj, void *shadow_data)
{
	struct klptrace_shadow_var *var = shadow_data;
	struct klptrace_shadow_item *item = obj;

	if (var->cookie == klptrace_shadow_target_item(0)->cookie)
		atomic_dec(&item->shadowed);
}

static int klptrace_shadow_setup(struct klp_state *state)
{
	struct klptrace_shadow_data *data;
	unsigned int i;

	data = kzalloc(sizeof(*data), GFP_KERNEL);
	if (!data)
		return -ENOMEM;
	for (i = 0; i < KLPTRACE_SHADOW_ITEMS; i++) {
		struct klptrace_shadow_item *item = klptrace_shadow_target_item(i);

		vars[i] = klp_shadow_get_or_alloc(item, KLPTRACE_SHADOW_VAR_ID, sizeof(*vars[i]),
						  GFP_KERNEL, klptrace_shadow_ctor, data);
		if (!vars[i]) {
			klp_shadow_free_all(KLPTRACE_SHADOW_VAR_ID, klptrace_shadow_dtor);
			kfree(data);
			return -ENOMEM;
		}
		/*
		 * Left by an earlier leak, so the constructor did not run (see
		 * (6)); counted in `shadowed` unless the target was reloaded since.
		 */
		if (vars[i]->data != data) {
			vars[i]->data = data;
			if (vars[i]->cookie != item->cookie) {
				vars[i]->cookie = item->cookie;
				atomic_inc(&item->shadowed);
			}
		}
	}
	state->data = data;
	return 0;
}

static int klptrace_shadow_takeover(struct klp_state *state, struct klp_state *prev)
{
	unsigned int i;

	for (i = 0; i < KLPTRACE_SHADOW_ITEMS; i++) {
		vars[i] = klp_shadow_get(klptrace_shadow_target_item(i), KLPTRACE_SHADOW_VAR_ID);
		/* the predecessor's state is incomplete: refuse rather than guess */
		if (!vars[i])
			return -EINVAL;
	}
	state->data = prev->data;
	return 0;
}

static int klptrace_shadow_pre_patch(struct klp_object *obj)
{
	struct klp_state *state, *prev;

	klptrace_callback_info("pre_patch", obj);
	state = own_state();
	prev = klp_get_prev_state(KLPTRACE_SHADOW_STATE_ID);
	if (prev && prev->data)
		return klptrace_shadow_takeover(state, prev);
	return klptrace_shadow_setup(state);
}

static void klptrace_shadow_post_patch(struct klp_object *obj)
{
	struct klptrace_shadow_data *data;
	unsigned int i;

	klptrace_callback_info("post_patch", obj);
	data = own_state()->data;
	data->version = KLPTRACE_SHADOW_LP_VERSION;
	strscpy(data->owner, KBUILD_MODNAME, sizeof(data->owner));
	for (i = 0; i < KLPTRACE_SHADOW_ITEMS; i++)
		vars[i]->version = KLPTRACE_SHADOW_LP_VERSION;
	data->active = true;
}

static void klptrace_shadow_pre_unpatch(struct klp_object *obj)
{
	struct klptrace_shadow_data *data;

	klptrace_callback_info("pre_unpatch", obj);
	data = own_state()->data;
	data->active = false;
}

static void klptrace_shadow_post_unpatch(struct klp_object *obj)
{
	struct klp_state *state, *prev;

	klptrace_callback_info("post_unpatch", obj);
	state = own_state();
	prev = klp_get_prev_state(KLPTRACE_SHADOW_STATE_ID);
	/* a reversed replace: the predecessor still owns data and variables */
	if (prev && prev->data == state->data) {
		state->data = NULL;
		return;
	}
	if (!leak)
		klp_shadow_free_all(KLPTRACE_SHADOW_VAR_ID, klptrace_shadow_dtor);
	kfree(state->data);
	state->data = NULL;
}

/* The new getter: the state and each item's shadow variable, as found now. */
static int livepatch_items_get(char *buf, const struct kernel_param *kp)
{
	struct klptrace_shadow_data *data = own_state()->data;
	unsigned int i;
	int n;

	/* unreachable once post_unpatch ran: no task is left in this function */
	if (!data)
		return sysfs_emit(buf, "%s: no state\n", KBUILD_MODNAME);
	n = sysfs_emit(buf, "%s: state %lu version %u owner %s%s; shadows", KBUILD_MODNAME,
		       KLPTRACE_SHADOW_STATE_ID, data->version, data->owner,
		       data->active ? "" : " (tearing down)");
	for (i = 0; i < KLPTRACE_SHADOW_ITEMS; i++) {
		struct klptrace_shadow_var *var =
			klp_shadow_get(klptrace_shadow_target_item(i), KLPTRACE_SHADOW_VAR_ID);

		if (var)
			n += sysfs_emit_at(buf, n, " %u:v%u", i, var->version);
		else
			n += sysfs_emit_at(buf, n, " %u:none", i);
	}
	return n + sysfs_emit_at(buf, n, "\n");
}

static struct klp_func target_funcs[] = {
	{ .old_name = "klptrace_shadow_target_items_get", .new_func = livepatch_items_get },
	{ }
};

static struct klp_object objs[] = {
	{
		.name = "klptrace_shadow_target",
		.funcs = target_funcs,
		.callbacks = {
			.pre_patch = klptrace_shadow_pre_patch,
			.post_patch = klptrace_shadow_post_patch,
			.pre_unpatch = klptrace_shadow_pre_unpatch,
			.post_unpatch = klptrace_shadow_post_unpatch,
		},
	},
	{ }
};

static struct klp_state states[] = {
	{ .id = KLPTRACE_SHADOW_STATE_ID, .version = KLPTRACE_SHADOW_LP_VERSION },
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.states = states,
	.replace = KLPTRACE_SHADOW_LP_REPLACE,
};

static int __init klptrace_shadow_lp_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit klptrace_shadow_lp_exit(void)
{
}

module_init(klptrace_shadow_lp_init);
module_exit(klptrace_shadow_lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

#endif
