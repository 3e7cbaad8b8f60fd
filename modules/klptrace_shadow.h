/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What klptrace_shadow_target and its livepatches (klptrace_shadow_lp1/2/3,
 * all built from klptrace_shadow_lp.h) share: the state and shadow ids, and
 * the target's objects that the shadow variables hang on.
 *
 * A klp_state id only has to be non-zero (Documentation/livepatch/
 * system-state.rst; state.c's klp_for_each_state() stops at id 0), and a
 * shadow variable is found by the pair <obj, id> (kernel/livepatch/shadow.c,
 * klp_shadow_match()), so any id not used by another module does.
 */
#ifndef KLPTRACE_SHADOW_H
#define KLPTRACE_SHADOW_H

#include <linux/atomic.h>
#include <linux/types.h>

/* the klp_state every klptrace_shadow_lp* declares (issue 21) */
#define KLPTRACE_SHADOW_STATE_ID	21UL
/*
 * The shadow id of the variable each livepatch hangs on every item: the
 * state's own id. The variables are that state's data, handed over with it
 * (system-state.rst); sharing the id says so to a reader of the recording,
 * and klptrace's ledger counts a variable whose id is an installed patch's
 * state as that patch's, not as leaked.
 */
#define KLPTRACE_SHADOW_VAR_ID		KLPTRACE_SHADOW_STATE_ID

#define KLPTRACE_SHADOW_ITEMS		3

/* An object of the target's, unchanged by the livepatches' layout. */
struct klptrace_shadow_item {
	unsigned int index;
	/*
	 * Set anew each time the target loads: a shadow variable whose
	 * cookie differs was left by an earlier load of the target at the
	 * same address (a leak), and is not counted in `shadowed`.
	 */
	u64 cookie;
	/*
	 * How many shadow variables hang on this item now: the livepatches'
	 * constructor increments it and their destructor decrements it. Both run
	 * under shadow.c's klp_shadow_lock with interrupts off, hence an atomic.
	 */
	atomic_t shadowed;
};

/* The target's item i (i < KLPTRACE_SHADOW_ITEMS), exported to the livepatches. */
struct klptrace_shadow_item *klptrace_shadow_target_item(unsigned int i);

#endif
