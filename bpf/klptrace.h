/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one event record that klptrace's BPF programs send to user space.
 *
 * Kinds and numbers must match klptrace/events.py (EventKind, Callback);
 * tests/test_events.py checks that they do.
 */
#ifndef KLPTRACE_H
#define KLPTRACE_H

#define KLPT_NAME_LEN 56	/* MODULE_NAME_LEN on 64-bit */
#define KLPT_COMM_LEN 16

/* event kinds */
#define KLPT_ENABLE			1
#define KLPT_ENABLE_RET			2
#define KLPT_TRANSITION_INIT		3
#define KLPT_TRANSITION_START		4
#define KLPT_TRANSITION_TRY		5
#define KLPT_TRANSITION_COMPLETE	6
#define KLPT_TRANSITION_DONE		7
#define KLPT_TRANSITION_CANCEL		8
#define KLPT_TRANSITION_REVERSE		9
#define KLPT_TRANSITION_FORCE		10
#define KLPT_PATCH_OBJECT		11
#define KLPT_UNPATCH_OBJECT		12
#define KLPT_UNPATCH_OBJECTS		13
#define KLPT_MODULE_COMING		14
#define KLPT_MODULE_COMING_RET		15
#define KLPT_MODULE_GOING		16
#define KLPT_MODULE_INIT		18
#define KLPT_MODULE_INIT_RET		19
#define KLPT_MODULE_FREE		20
#define KLPT_CALLBACK			21
#define KLPT_TRANSITION_REVERSED	22
#define KLPT_TASK_BLOCKED		23
#define KLPT_KMSG_WRITE			24
#define KLPT_STATE			25
#define KLPT_SHADOW			26
#define KLPT_STATE_DECLARED		27

/* the op of a STATE or SHADOW event (klptrace/events.py OPS) */
#define KLPT_OP_GET_STATE	1
#define KLPT_OP_GET_PREV_STATE	2
#define KLPT_OP_SHADOW_ALLOC	3
#define KLPT_OP_SHADOW_GET_OR_ALLOC	4
#define KLPT_OP_SHADOW_GET	5
#define KLPT_OP_SHADOW_FREE	6
#define KLPT_OP_SHADOW_FREE_ALL	7

/* callback roles (klp_callbacks members) */
#define KLPT_CB_PRE_PATCH	1
#define KLPT_CB_POST_PATCH	2
#define KLPT_CB_PRE_UNPATCH	3
#define KLPT_CB_POST_UNPATCH	4

/* flags */
#define KLPT_F_LIVEPATCH	1	/* the module is a livepatch (mod->klp) */
#define KLPT_F_FOUND		2	/* STATE: a state was found: version holds its version */
#define KLPT_F_CB_TAILCALL	4	/* STATE, SHADOW: a traced callback tail-called the
					   function: the caller is the callback's module */

struct klpt_event {
	__u64 ts_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 ip;
	__u32 pid;		/* thread group id */
	__u32 tid;
	__u32 kind;
	__s32 ret;
	__s32 state;		/* module state, or target patch state */
	__u32 callback;
	__u32 flags;		/* KLPT_F_* */
	__u32 pad;
	char comm[KLPT_COMM_LEN];
	char patch[KLPT_NAME_LEN];
	char object[KLPT_NAME_LEN];
	/*
	 * STATE, SHADOW, STATE_DECLARED (ip: where the call returns to, the caller's code):
	 *   addr: what the call returned (the klp_state *, the shadow data), obj: the
	 *   shadow's object, id: the state or shadow id, size: the shadow's size
	 * MODULE_INIT: addr, size: the module's core text; obj, id: its init text (start,
	 *   size); all 0 when this kernel's struct module is not understood
	 */
	__u64 addr;
	__u64 obj;
	__u64 id;
	__u64 size;
	__u32 op;		/* KLPT_OP_* */
	__u32 version;
};

#endif
