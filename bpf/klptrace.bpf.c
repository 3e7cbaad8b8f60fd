// SPDX-License-Identifier: GPL-2.0
/*
 * klptrace: probes on the livepatch core, on module loading and on the
 * callbacks of named livepatch modules.
 *
 * No kernel structure is defined here: the offsets of the few fields read
 * (OFF_*) come from the running kernel's BTF as -D flags, and so do the
 * addresses of the core's two transition globals (ADDR_*). That keeps the
 * compile cheap enough for an emulated guest.
 */
#include <uapi/linux/ptrace.h>

#include "klptrace.h"

/*
 * 32 MiB: a livepatch's patched code may call klp_shadow_get() on a hot path,
 * and each call is an event. bench/ (docs/benchmark.md) measured 64 pages
 * losing all but about 1,200 events of a burst of 3,000 gets under emulation,
 * where the Python reader drains under 1,000 a second; 8192 pages recorded
 * bursts of 100,000 whole on 6.1 and 7.3.4. A power of two, as
 * kernel/bpf/ringbuf.c requires.
 */
#ifndef KLPT_RINGBUF_PAGES
#define KLPT_RINGBUF_PAGES 8192
#endif
#ifndef KLPT_MAX_OBJS
#define KLPT_MAX_OBJS 16
#endif
#ifndef KLPT_MAX_STATES
#define KLPT_MAX_STATES 16
#endif

BPF_RINGBUF_OUTPUT(events, KLPT_RINGBUF_PAGES);
BPF_ARRAY(lost, u64, 1);

struct klpt_name { char s[KLPT_NAME_LEN]; };

struct klpt_stash {
	u64 ptr;
	u64 sp;
	s32 state;
	u32 role;
	char patch[KLPT_NAME_LEN];
	char object[KLPT_NAME_LEN];
};

/* struct klp_object * -> name of the livepatch module it belongs to */
BPF_HASH(obj_patch, u64, struct klpt_name, 1024);
/* entry -> return, keyed by pid_tgid: one map per probed function */
BPF_HASH(enable_stash, u64, struct klpt_stash, 256);
BPF_HASH(complete_stash, u64, struct klpt_stash, 256);
BPF_HASH(patch_obj_stash, u64, struct klpt_stash, 256);
BPF_HASH(coming_stash, u64, struct klpt_stash, 256);
BPF_HASH(init_stash, u64, struct klpt_stash, 256);
BPF_HASH(cb_stash, u64, struct klpt_stash, 256);
BPF_HASH(switch_stash, u64, struct klpt_stash, 256);

/* a call of one of the state and shadow functions, from entry to return */
struct klpt_api {
	u64 sp;		/* the stack pointer at entry: where the return address is */
	u64 patch;	/* klp_get_state's patch */
	u64 obj;
	u64 id;
	u64 size;
	u32 op;
};
BPF_HASH(api_stash, u64, struct klpt_api, 1024);

static __always_inline void *read_ptr(const void *base, long off)
{
	void *p = 0;

	if (base)
		bpf_probe_read_kernel(&p, sizeof(p), (const char *)base + off);
	return p;
}

static __always_inline s32 read_s32(const void *base, long off)
{
	s32 v = -1;

	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline u32 read_u32(const void *base, long off)
{
	u32 v = 0;

	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline u8 read_u8(const void *base, long off)
{
	u8 v = 0;

	bpf_probe_read_kernel(&v, sizeof(v), (const char *)base + off);
	return v;
}

static __always_inline void mod_name(char *dst, const void *mod)
{
	if (mod)
		bpf_probe_read_kernel_str(dst, KLPT_NAME_LEN, (const char *)mod + OFF_MODULE_NAME);
}

static __always_inline void patch_name(char *dst, const void *patch)
{
	mod_name(dst, read_ptr(patch, OFF_KLP_PATCH_MOD));
}

/* klp_object->name, or "vmlinux" for the NULL name */
static __always_inline void obj_name(char *dst, const void *obj)
{
	const char *name = read_ptr(obj, OFF_KLP_OBJECT_NAME);

	if (name) {
		bpf_probe_read_kernel_str(dst, KLPT_NAME_LEN, name);
	} else {
		dst[0] = 'v'; dst[1] = 'm'; dst[2] = 'l'; dst[3] = 'i';
		dst[4] = 'n'; dst[5] = 'u'; dst[6] = 'x'; dst[7] = 0;
	}
}

static __always_inline void *transition_patch(void)
{
	return read_ptr((void *)ADDR_KLP_TRANSITION_PATCH, 0);
}

static __always_inline s32 target_state(void)
{
	return read_s32((void *)ADDR_KLP_TARGET_STATE, 0);
}

/* The livepatch an object belongs to: known from klp_enable_patch, else the one in transition. */
static __always_inline void obj_patch_name(char *dst, const void *obj)
{
	u64 key = (u64)obj;
	struct klpt_name *n = obj_patch.lookup(&key);

	if (n)
		__builtin_memcpy(dst, n->s, KLPT_NAME_LEN);
	else
		patch_name(dst, transition_patch());
}

static __always_inline struct klpt_event *ev_new(u32 kind)
{
	struct klpt_event *e = events.ringbuf_reserve(sizeof(struct klpt_event));
	u64 id;

	if (!e) {
		int zero = 0;
		u64 *n = lost.lookup(&zero);

		if (n)
			__sync_fetch_and_add(n, 1);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	id = bpf_get_current_pid_tgid();
	e->ts_ns = bpf_ktime_get_ns();
	e->pid = id >> 32;
	e->tid = (u32)id;
	e->kind = kind;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	return e;
}

static __always_inline void ev_send(struct klpt_event *e)
{
	events.ringbuf_submit(e, 0);
}

/*
 * The states a patch being enabled declares: patch->states, an array ended by
 * an id of 0 (klp_for_each_state in kernel/livepatch/state.c).
 */
static __always_inline void declared_states(void *patch, const char *name)
{
#if KLPT_STATE_SHAPE == 1	/* btf.STATE_OK */
	char *states = read_ptr(patch, OFF_KLP_PATCH_STATES);

	if (!states)
		return;
#pragma clang loop unroll(disable)
	for (int i = 0; i < KLPT_MAX_STATES; i++) {
		char *state = states + i * SIZE_KLP_STATE;
		u64 id = (u64)read_ptr(state, OFF_KLP_STATE_ID);
		struct klpt_event *e;

		if (!id)
			break;
		e = ev_new(KLPT_STATE_DECLARED);
		if (!e)
			return;
		__builtin_memcpy(e->patch, name, KLPT_NAME_LEN);
		e->id = id;
		e->addr = (u64)state;
		e->version = read_u32(state, OFF_KLP_STATE_VERSION);
		e->flags |= KLPT_F_FOUND;
		ev_send(e);
	}
#endif
}

/* ---- the livepatch core ------------------------------------------------ */

int klp_enable_patch_entry(struct pt_regs *ctx)
{
	void *patch = (void *)PT_REGS_PARM1(ctx);
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash st = {};
	struct klpt_event *e;
	char *objs;

	patch_name(st.patch, patch);
	st.ptr = (u64)patch;
	enable_stash.update(&id, &st);

	/* Remember which patch each static klp_object belongs to. */
	objs = read_ptr(patch, OFF_KLP_PATCH_OBJS);
	if (objs) {
		struct klpt_name n = {};

		__builtin_memcpy(n.s, st.patch, KLPT_NAME_LEN);
		/* a bounded loop (verified since 5.3), not unrolled: smaller to compile */
#pragma clang loop unroll(disable)
		for (int i = 0; i < KLPT_MAX_OBJS; i++) {
			char *obj = objs + i * SIZE_KLP_OBJECT;
			u64 key = (u64)obj;

			if (!read_ptr(obj, OFF_KLP_OBJECT_NAME) && !read_ptr(obj, OFF_KLP_OBJECT_FUNCS))
				break;
			obj_patch.update(&key, &n);
		}
	}

	e = ev_new(KLPT_ENABLE);
	if (!e)
		return 0;
	__builtin_memcpy(e->patch, st.patch, KLPT_NAME_LEN);
	ev_send(e);
	declared_states(patch, st.patch);
	return 0;
}

int klp_enable_patch_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash *st = enable_stash.lookup(&id);
	struct klpt_event *e = ev_new(KLPT_ENABLE_RET);

	if (e) {
		if (st)
			__builtin_memcpy(e->patch, st->patch, KLPT_NAME_LEN);
		e->ret = PT_REGS_RC(ctx);
		ev_send(e);
	}
	if (st)
		enable_stash.delete(&id);
	return 0;
}

int klp_init_transition_entry(struct pt_regs *ctx)
{
	struct klpt_event *e = ev_new(KLPT_TRANSITION_INIT);

	if (!e)
		return 0;
	patch_name(e->patch, (void *)PT_REGS_PARM1(ctx));
	e->state = PT_REGS_PARM2(ctx);
	ev_send(e);
	return 0;
}

/* start, try, cancel, reverse and force act on the patch in transition */
static __always_inline int transition_event(u32 kind)
{
	struct klpt_event *e = ev_new(kind);

	if (!e)
		return 0;
	patch_name(e->patch, transition_patch());
	e->state = target_state();
	ev_send(e);
	return 0;
}

int klp_start_transition_entry(struct pt_regs *ctx) { return transition_event(KLPT_TRANSITION_START); }

/* one try; ret carries klp_signals_cnt, the number of failed tries before it */
int klp_try_complete_transition_entry(struct pt_regs *ctx)
{
	struct klpt_event *e = ev_new(KLPT_TRANSITION_TRY);

	if (!e)
		return 0;
	patch_name(e->patch, transition_patch());
	e->state = target_state();
	e->ret = read_s32((void *)ADDR_KLP_SIGNALS_CNT, 0);
	ev_send(e);
	return 0;
}

/*
 * klp_check_and_switch_task(task, const char **oldname) is called through
 * task_call_func(), so it always has a symbol. A non-zero result is the
 * kernel's reason for not switching that task on this try.
 */
int klp_check_and_switch_task_entry(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash st = {};

	st.ptr = PT_REGS_PARM1(ctx);
	st.sp = PT_REGS_PARM2(ctx);	/* where the old function's name will be */
	switch_stash.update(&id, &st);
	return 0;
}

int klp_check_and_switch_task_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash *st = switch_stash.lookup(&id);
	struct klpt_event *e;
	int ret = PT_REGS_RC(ctx);
	void *task;

	if (!st)
		return 0;
	task = (void *)st->ptr;
	if (ret) {
		e = ev_new(KLPT_TASK_BLOCKED);
		if (e) {
			e->pid = read_s32(task, OFF_TASK_TGID);
			e->tid = read_s32(task, OFF_TASK_PID);
			bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), (char *)task + OFF_TASK_COMM);
			patch_name(e->patch, transition_patch());
			e->state = target_state();
			e->ret = ret;
			if (ret == -98) {	/* -EADDRINUSE: sleeping on a to-be-patched function */
				const char *fn = read_ptr((void *)st->sp, 0);

				if (fn)
					bpf_probe_read_kernel_str(e->object, KLPT_NAME_LEN, fn);
			}
			ev_send(e);
		}
	}
	switch_stash.delete(&id);
	return 0;
}
int klp_cancel_transition_entry(struct pt_regs *ctx) { return transition_event(KLPT_TRANSITION_CANCEL); }
int klp_reverse_transition_entry(struct pt_regs *ctx) { return transition_event(KLPT_TRANSITION_REVERSE); }
/* klp_reverse_transition() ends by starting the reversed transition */
int klp_reverse_transition_return(struct pt_regs *ctx) { return transition_event(KLPT_TRANSITION_REVERSED); }
int klp_force_transition_entry(struct pt_regs *ctx) { return transition_event(KLPT_TRANSITION_FORCE); }

int klp_complete_transition_entry(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash st = {};
	struct klpt_event *e;

	patch_name(st.patch, transition_patch());
	st.state = target_state();
	complete_stash.update(&id, &st);

	e = ev_new(KLPT_TRANSITION_COMPLETE);
	if (!e)
		return 0;
	__builtin_memcpy(e->patch, st.patch, KLPT_NAME_LEN);
	e->state = st.state;
	ev_send(e);
	return 0;
}

/* After the post callbacks: the kernel's "'%s': %s complete" */
int klp_complete_transition_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash *st = complete_stash.lookup(&id);
	struct klpt_event *e;

	if (!st)
		return 0;
	e = ev_new(KLPT_TRANSITION_DONE);
	if (e) {
		__builtin_memcpy(e->patch, st->patch, KLPT_NAME_LEN);
		e->state = st->state;
		ev_send(e);
	}
	complete_stash.delete(&id);
	return 0;
}

int klp_patch_object_entry(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash st = {};
	void *obj = (void *)PT_REGS_PARM1(ctx);

	st.ptr = (u64)obj;
	obj_name(st.object, obj);
	obj_patch_name(st.patch, obj);
	patch_obj_stash.update(&id, &st);
	return 0;
}

int klp_patch_object_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash *st = patch_obj_stash.lookup(&id);
	struct klpt_event *e;

	if (!st)
		return 0;
	e = ev_new(KLPT_PATCH_OBJECT);
	if (e) {
		__builtin_memcpy(e->patch, st->patch, KLPT_NAME_LEN);
		__builtin_memcpy(e->object, st->object, KLPT_NAME_LEN);
		e->ret = PT_REGS_RC(ctx);
		ev_send(e);
	}
	patch_obj_stash.delete(&id);
	return 0;
}

int klp_unpatch_object_entry(struct pt_regs *ctx)
{
	void *obj = (void *)PT_REGS_PARM1(ctx);
	struct klpt_event *e = ev_new(KLPT_UNPATCH_OBJECT);

	if (!e)
		return 0;
	obj_name(e->object, obj);
	obj_patch_name(e->patch, obj);
	ev_send(e);
	return 0;
}

int klp_unpatch_objects_entry(struct pt_regs *ctx)
{
	struct klpt_event *e = ev_new(KLPT_UNPATCH_OBJECTS);

	if (!e)
		return 0;
	patch_name(e->patch, (void *)PT_REGS_PARM1(ctx));
	ev_send(e);
	return 0;
}

/* ---- modules ------------------------------------------------------------- */

static __always_inline int module_event(u32 kind, void *mod, int with_text)
{
	struct klpt_event *e = ev_new(kind);

	if (!e)
		return 0;
	mod_name(e->object, mod);
	e->state = read_s32(mod, OFF_MODULE_STATE);
	if (mod && read_u8(mod, OFF_MODULE_KLP))
		e->flags |= KLPT_F_LIVEPATCH;
#if KLPT_MODULE_TEXT != 3	/* btf.MODTEXT_UNKNOWN */
	/*
	 * Where the module's code is, for the callers of the state and shadow
	 * functions (see klp_api_return): at do_init_module() the module is laid
	 * out and its init has not run, so no call from it can come earlier.
	 */
	if (with_text) {
		e->addr = (u64)read_ptr(mod, OFF_MODULE_TEXT);
		e->size = read_u32(mod, OFF_MODULE_TEXT_SIZE);
		e->obj = (u64)read_ptr(mod, OFF_MODULE_INIT_TEXT);
		e->id = read_u32(mod, OFF_MODULE_INIT_TEXT_SIZE);
	}
#endif
	ev_send(e);
	return 0;
}


int klp_module_coming_entry(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	void *mod = (void *)PT_REGS_PARM1(ctx);
	struct klpt_stash st = {};

	mod_name(st.object, mod);
	coming_stash.update(&id, &st);
	return module_event(KLPT_MODULE_COMING, mod, 0);
}

int klp_module_coming_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash *st = coming_stash.lookup(&id);
	struct klpt_event *e;

	if (!st)
		return 0;
	e = ev_new(KLPT_MODULE_COMING_RET);
	if (e) {
		__builtin_memcpy(e->object, st->object, KLPT_NAME_LEN);
		e->ret = PT_REGS_RC(ctx);
		ev_send(e);
	}
	coming_stash.delete(&id);
	return 0;
}

int klp_module_going_entry(struct pt_regs *ctx)
{
	return module_event(KLPT_MODULE_GOING, (void *)PT_REGS_PARM1(ctx), 0);
}

int do_init_module_entry(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	void *mod = (void *)PT_REGS_PARM1(ctx);
	struct klpt_stash st = {};

	mod_name(st.object, mod);
	st.role = read_u8(mod, OFF_MODULE_KLP);
	init_stash.update(&id, &st);
	return module_event(KLPT_MODULE_INIT, mod, 1);
}

/* The module may be freed by now: use the name taken on entry. */
int do_init_module_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash *st = init_stash.lookup(&id);
	struct klpt_event *e;

	if (!st)
		return 0;
	e = ev_new(KLPT_MODULE_INIT_RET);
	if (e) {
		__builtin_memcpy(e->object, st->object, KLPT_NAME_LEN);
		if (st->role)
			e->flags |= KLPT_F_LIVEPATCH;
		e->ret = PT_REGS_RC(ctx);
		ev_send(e);
	}
	init_stash.delete(&id);
	return 0;
}

/* free_module(): the last step of an unload, after the module's exit and klp_module_going */
int free_module_entry(struct pt_regs *ctx)
{
	return module_event(KLPT_MODULE_FREE, (void *)PT_REGS_PARM1(ctx), 0);
}

/*
 * A write to /dev/kmsg: only when and by whom. User space reads the text back
 * from the log, in the same order (the selftests log their commands this way).
 */
int devkmsg_write_entry(struct pt_regs *ctx)
{
	struct klpt_event *e = ev_new(KLPT_KMSG_WRITE);

	if (e)
		ev_send(e);
	return 0;
}

/* ---- callbacks in livepatch modules ---------------------------------------
 * Attached to kprobe events on every function of a named livepatch module.
 * A function is a callback only when its address is one of its first
 * argument's (a struct klp_object *) callbacks; its role is which one.
 */

static __always_inline int near(u64 ip, u64 fn)
{
	/* the probe may sit past an ENDBR instruction at the function's start */
	return fn && ip >= fn && ip < fn + 16;
}

int callback_entry(struct pt_regs *ctx)
{
	void *obj = (void *)PT_REGS_PARM1(ctx);
	u64 ip = bpf_get_func_ip(ctx);
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash st = {};
	u32 role = 0;

	if (near(ip, (u64)read_ptr(obj, OFF_KLP_OBJECT_CB_PRE_PATCH)))
		role = KLPT_CB_PRE_PATCH;
	else if (near(ip, (u64)read_ptr(obj, OFF_KLP_OBJECT_CB_POST_PATCH)))
		role = KLPT_CB_POST_PATCH;
	else if (near(ip, (u64)read_ptr(obj, OFF_KLP_OBJECT_CB_PRE_UNPATCH)))
		role = KLPT_CB_PRE_UNPATCH;
	else if (near(ip, (u64)read_ptr(obj, OFF_KLP_OBJECT_CB_POST_UNPATCH)))
		role = KLPT_CB_POST_UNPATCH;
	if (!role)
		return 0;

	st.ptr = ip;
	st.sp = PT_REGS_SP(ctx);
	st.role = role;
	obj_name(st.object, obj);
	obj_patch_name(st.patch, obj);
	st.state = read_s32(read_ptr(obj, OFF_KLP_OBJECT_MOD), OFF_MODULE_STATE);
	cb_stash.update(&id, &st);
	return 0;
}

int callback_return(struct pt_regs *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	struct klpt_stash *st = cb_stash.lookup(&id);
	struct klpt_event *e;

	/*
	 * Every function of the module has a return probe: only the callback's
	 * own return is above the stack pointer its entry saw; a helper it
	 * called returns deeper.
	 */
	if (!st || PT_REGS_SP(ctx) < st->sp)
		return 0;
	e = ev_new(KLPT_CALLBACK);
	if (e) {
		__builtin_memcpy(e->patch, st->patch, KLPT_NAME_LEN);
		__builtin_memcpy(e->object, st->object, KLPT_NAME_LEN);
		e->callback = st->role;
		e->state = st->state;
		e->ip = st->ptr;
		/* only pre_patch returns a value */
		if (st->role == KLPT_CB_PRE_PATCH)
			e->ret = PT_REGS_RC(ctx);
		ev_send(e);
	}
	cb_stash.delete(&id);
	return 0;
}

/* ---- the state and shadow functions ---------------------------------------
 * kernel/livepatch/state.c and shadow.c, all exported. An event is sent at the
 * return, with what was returned. The functions call each other
 * (klp_get_prev_state() calls klp_get_state(), the allocs call
 * klp_shadow_get()): only the outermost call of a thread is recorded, told
 * by the stack pointer (a nested call's is below the outer's).
 *
 * The caller: the return address, which user space resolves to a module in
 * event order, against the text ranges do_init_module events carry (read
 * from struct module while it is laid out) and a snapshot of /proc/kallsyms
 * for modules loaded before the recording: a module unloaded soon after its
 * call was still in that table when the call's event was decoded
 * (record/callers.py). The kretprobe handler sees the real return address as
 * its instruction pointer (__kretprobe_trampoline_handler() and
 * rethook_trampoline_handler() set it), where an entry probe could read the
 * kretprobe trampoline's instead. A tail call (a jmp) leaves its caller's
 * caller there: when a traced callback tail-calls one of these functions
 * (its stack pointer at entry is the callback's), ip is the callback's own
 * address instead, in its module, and KLPT_F_CB_TAILCALL says so. A tail call
 * from other module code is named after whoever called that code.
 */

static __always_inline int klp_api_entry(struct pt_regs *ctx, u32 op, u64 patch, u64 obj,
					 u64 id, u64 size)
{
	u64 tid = bpf_get_current_pid_tgid();
	struct klpt_api *outer = api_stash.lookup(&tid);
	struct klpt_api a = {};

	a.sp = PT_REGS_SP(ctx);
	/* deeper than a call of this thread still running: a nested call */
	if (outer && a.sp < outer->sp)
		return 0;
	a.op = op;
	a.patch = patch;
	a.obj = obj;
	a.id = id;
	a.size = size;
	api_stash.update(&tid, &a);
	return 0;
}

static __always_inline int klp_api_return(struct pt_regs *ctx)
{
	u64 tid = bpf_get_current_pid_tgid();
	struct klpt_api *a = api_stash.lookup(&tid);
	struct klpt_stash *cb;
	struct klpt_event *e;
	u64 ret = PT_REGS_RC(ctx);

	/* after the return the stack pointer is above the entry's: else a nested return */
	if (!a || PT_REGS_SP(ctx) <= a->sp)
		return 0;
	e = ev_new(a->op <= KLPT_OP_GET_PREV_STATE ? KLPT_STATE : KLPT_SHADOW);
	if (e) {
		e->op = a->op;
		e->id = a->id;
		e->ip = PT_REGS_IP(ctx);
		cb = cb_stash.lookup(&tid);
		if (cb) {
			e->callback = cb->role;
			__builtin_memcpy(e->patch, cb->patch, KLPT_NAME_LEN);
			__builtin_memcpy(e->object, cb->object, KLPT_NAME_LEN);
			if (cb->sp == a->sp) {
				/* the callback's own address names its module */
				e->flags |= KLPT_F_CB_TAILCALL;
				e->ip = cb->ptr;
			}
		}
		if (a->op == KLPT_OP_GET_STATE || a->op == KLPT_OP_GET_PREV_STATE) {
			/* the state's patch, not the callback's */
			if (a->op == KLPT_OP_GET_STATE)
				patch_name(e->patch, (void *)a->patch);
			else
				patch_name(e->patch, transition_patch());
			e->addr = ret;
#if KLPT_STATE_SHAPE == 1
			if (ret) {
				e->version = read_u32((void *)ret, OFF_KLP_STATE_VERSION);
				e->flags |= KLPT_F_FOUND;
			}
#endif
		} else {
			e->obj = a->obj;
			e->size = a->size;
			if (a->op != KLPT_OP_SHADOW_FREE && a->op != KLPT_OP_SHADOW_FREE_ALL)
				e->addr = ret;
		}
		ev_send(e);
	}
	api_stash.delete(&tid);
	return 0;
}

int klp_get_state_entry(struct pt_regs *ctx)
{
	return klp_api_entry(ctx, KLPT_OP_GET_STATE, PT_REGS_PARM1(ctx), 0, PT_REGS_PARM2(ctx), 0);
}

int klp_get_prev_state_entry(struct pt_regs *ctx)
{
	return klp_api_entry(ctx, KLPT_OP_GET_PREV_STATE, 0, 0, PT_REGS_PARM1(ctx), 0);
}

int klp_shadow_alloc_entry(struct pt_regs *ctx)
{
	return klp_api_entry(ctx, KLPT_OP_SHADOW_ALLOC, 0, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx),
			     PT_REGS_PARM3(ctx));
}

int klp_shadow_get_or_alloc_entry(struct pt_regs *ctx)
{
	return klp_api_entry(ctx, KLPT_OP_SHADOW_GET_OR_ALLOC, 0, PT_REGS_PARM1(ctx),
			     PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx));
}

int klp_shadow_get_entry(struct pt_regs *ctx)
{
	return klp_api_entry(ctx, KLPT_OP_SHADOW_GET, 0, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}

int klp_shadow_free_entry(struct pt_regs *ctx)
{
	return klp_api_entry(ctx, KLPT_OP_SHADOW_FREE, 0, PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), 0);
}

int klp_shadow_free_all_entry(struct pt_regs *ctx)
{
	return klp_api_entry(ctx, KLPT_OP_SHADOW_FREE_ALL, 0, 0, PT_REGS_PARM1(ctx), 0);
}

int klp_api_ret(struct pt_regs *ctx) { return klp_api_return(ctx); }
