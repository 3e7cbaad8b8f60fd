#!/bin/bash
# The scenarios of klptrace run the way the kernel's livepatch selftests run
# theirs (tools/testing/selftests/livepatch/functions.sh, test-callbacks.sh):
# insmod, rmmod and sysfs writes, each followed by polling sysfs every 0.1 s
# until the kernel is where the next step needs it. No tracing. This is the
# baseline that bench/run.py compares `klptrace run` with.
#
#   bench/harness.sh MODULE_DIR            run them (root, a livepatch kernel)
#   bench/harness.sh --dry-run             print the steps only
#
# Each test's `% ...` step lines are the same as the `% ...` lines of the
# scenario with that id (tests/test_bench.py checks it with --dry-run).
# Like the selftests, each test writes a canary to the kernel log and collects
# the livepatch lines logged after it; unlike them, it does not compare them
# (klptrace's scenarios hold the expected lines), and it skips modprobe's
# --dry-run and modinfo checks, which would only make the baseline slower.

set -u

MAX_RETRIES=600
RETRY_INTERVAL=".1"	# seconds, as in the selftests

DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then
	DRY_RUN=1
	MODULE_DIR=/nonexistent
else
	MODULE_DIR="${1:?usage: harness.sh MODULE_DIR | --dry-run}"
fi
RESULTS="${HARNESS_RESULTS:-/dev/null}"	# the collected kernel log lines go here

log() {
	if [[ $DRY_RUN == 1 ]]; then echo "$1"; return; fi
	echo "$1" > /dev/kmsg
	echo "$1"
}

die() {
	echo "ERROR: $1" >&2
	[[ $DRY_RUN == 1 ]] || echo "ERROR: $1" > /dev/kmsg
	exit 1
}

loop_until() {
	local cmd="$*"
	local i=0
	while true; do
		eval "$cmd" && return 0
		[[ $((i++)) -eq $MAX_RETRIES ]] && return 1
		sleep $RETRY_INTERVAL
	done
}

push_config() {
	DYNAMIC_DEBUG=$(grep '^kernel/livepatch' /sys/kernel/debug/dynamic_debug/control |
		awk -F'[: ]' '{print "file " $1 " line " $2 " " $4}')
}

pop_config() {
	if [[ -n "${DYNAMIC_DEBUG:-}" ]]; then
		echo -n "$DYNAMIC_DEBUG" > /sys/kernel/debug/dynamic_debug/control
	fi
}

setup_config() {
	[[ $DRY_RUN == 1 ]] && return
	[[ $(id -u) == 0 ]] || die "must be run as root"
	push_config
	cat <<-EOF > /sys/kernel/debug/dynamic_debug/control
		file kernel/livepatch/* +p
		func klp_try_switch_task -p
		EOF
	trap pop_config EXIT INT TERM HUP
}

load_mod() {
	local mod="$1"; shift
	local msg="% insmod $mod.ko $*"
	log "${msg%% }"
	[[ $DRY_RUN == 1 ]] && return
	local ret
	ret=$(insmod "$MODULE_DIR/$mod.ko" "$@" 2>&1) || die "$ret"
	loop_until '[[ -e "/sys/module/$mod" ]]' || die "failed to load module $mod"
}

load_lp_nowait() {
	local mod="$1"
	load_mod "$@"
	[[ $DRY_RUN == 1 ]] && return
	loop_until '[[ -e "/sys/kernel/livepatch/$mod" ]]' ||
		die "failed to load module $mod (sysfs)"
}

load_lp() {
	local mod="$1"
	load_lp_nowait "$@"
	[[ $DRY_RUN == 1 ]] && return
	loop_until 'grep -q "^0$" /sys/kernel/livepatch/$mod/transition' ||
		die "failed to complete transition"
}

load_failing_mod() {
	local mod="$1"; shift
	local msg="% insmod $mod.ko $*"
	log "${msg%% }"
	[[ $DRY_RUN == 1 ]] && return
	local ret
	ret=$(insmod "$MODULE_DIR/$mod.ko" "$@" 2>&1) && die "$mod unexpectedly loaded"
	log "$ret"
}

unload_mod() {
	local mod="$1"
	if [[ $DRY_RUN == 0 ]]; then
		loop_until '[[ $(cat "/sys/module/$mod/refcnt") == "0" ]]' ||
			die "failed to unload module $mod (refcnt)"
	fi
	log "% rmmod $mod"
	[[ $DRY_RUN == 1 ]] && return
	local ret
	ret=$(rmmod "$mod" 2>&1) || die "$ret"
	loop_until '[[ ! -e "/sys/module/$mod" ]]' ||
		die "failed to unload module $mod (/sys/module)"
}

unload_lp() {
	unload_mod "$1"
}

disable_lp() {
	local mod="$1"
	log "% echo 0 > /sys/kernel/livepatch/$mod/enabled"
	[[ $DRY_RUN == 1 ]] && return
	echo 0 > /sys/kernel/livepatch/"$mod"/enabled
	loop_until '[[ ! -e "/sys/kernel/livepatch/$mod" ]]' ||
		die "failed to disable livepatch $mod"
}

set_pre_patch_ret() {
	local mod="$1"
	local ret="$2"
	log "% echo $ret > /sys/module/$mod/parameters/pre_patch_ret"
	[[ $DRY_RUN == 1 ]] && return
	echo "$ret" > /sys/module/"$mod"/parameters/pre_patch_ret
	loop_until '[[ $(cat "/sys/module/$mod/parameters/pre_patch_ret") == "$ret" ]]' ||
		die "failed to set pre_patch_ret parameter for $mod module"
}

set_param() {
	local mod="$1" param="$2" value="$3"
	log "% echo $value > /sys/module/$mod/parameters/$param"
	[[ $DRY_RUN == 1 ]] && return
	echo "$value" > /sys/module/"$mod"/parameters/"$param"
}

wait_param() {
	[[ $DRY_RUN == 1 ]] && return
	loop_until '[[ $(cat "/sys/module/$1/parameters/$2") == "$3" ]]' ||
		die "$1's $2 does not read $3"
}

wait_transition() {
	[[ $DRY_RUN == 1 ]] && return
	loop_until 'grep -q "^$2$" /sys/kernel/livepatch/$1/transition' ||
		die "$1's transition does not read $2"
}

# a reader of one of klptrace_stall's debugfs files, asleep in its read
spawn_reader() {
	local path="/sys/kernel/debug/$STALL/$1"
	log "% cat $path & reader=\$!"
	[[ $DRY_RUN == 1 ]] && return
	cat "$path" > /dev/null & READER=$!
	wait_param $STALL sleepers 1
}

reap_reader() {
	log "% wait \$reader"
	[[ $DRY_RUN == 1 ]] && return
	wait "$READER" || die "the reader exited with status $?"
}

start_test() {
	echo "TEST: $1"
	[[ $DRY_RUN == 1 ]] && return
	local canary
	canary="klptrace harness timestamp: $(date --rfc-3339=ns)"
	echo "$canary" > /dev/kmsg
	loop_until 'dmesg | grep -q "$canary"' || die "can't find canary dmesg message: $canary"
	LAST_DMESG=$(dmesg | grep "$canary")
}

# The selftests' check_result, without the comparison
collect_result() {
	[[ $DRY_RUN == 1 ]] && return
	dmesg | awk -v last_dmesg="$LAST_DMESG" 'p; $0 == last_dmesg { p=1 }' |
		grep -e 'livepatch:' -e 'klptrace_' | grep -v '\(tainting\|taints\) kernel' |
		sed 's/^\[[ 0-9.]*\] //' >> "$RESULTS"
}

LP=klptrace_lp
LP2=klptrace_lp2
TARGET=klptrace_target
BUSY=klptrace_busy
STALL=klptrace_stall
STALL_LP=klptrace_stall_lp
SHADOW=klptrace_shadow_target
SLP1=klptrace_shadow_lp1
SLP2=klptrace_shadow_lp2
SLP3=klptrace_shadow_lp3

setup_config

start_test target-module-before-livepatch
load_mod $TARGET
load_lp $LP
disable_lp $LP
unload_lp $LP
unload_mod $TARGET
collect_result

start_test module-coming-notifier
load_lp $LP
load_mod $TARGET
disable_lp $LP
unload_lp $LP
unload_mod $TARGET
collect_result

start_test module-going-notifier
load_mod $TARGET
load_lp $LP
unload_mod $TARGET
disable_lp $LP
unload_lp $LP
collect_result

start_test module-coming-and-going-notifiers
load_lp $LP
load_mod $TARGET
unload_mod $TARGET
disable_lp $LP
unload_lp $LP
collect_result

start_test target-module-not-present
load_lp $LP
disable_lp $LP
unload_lp $LP
collect_result

start_test pre-patch-callback-enodev
load_mod $TARGET
load_failing_mod $LP pre_patch_ret=-19
unload_mod $TARGET
collect_result

start_test module-coming-pre-patch-callback-enodev
load_lp $LP
set_pre_patch_ret $LP -19
load_failing_mod $TARGET
disable_lp $LP
unload_lp $LP
collect_result

start_test multiple-target-modules
load_mod $BUSY block_transition=N
load_lp $LP
load_mod $TARGET
unload_mod $TARGET
disable_lp $LP
unload_lp $LP
unload_mod $BUSY
collect_result

start_test busy-target-module
load_mod $BUSY block_transition=Y
load_lp_nowait $LP
# the transition stalls on the busy module's worker
if [[ $DRY_RUN == 0 ]]; then
	loop_until 'grep -q "^1$" /sys/kernel/livepatch/$LP/transition' ||
		die "failed to stall transition"
fi
load_mod $TARGET
unload_mod $TARGET
disable_lp $LP
unload_lp $LP
unload_mod $BUSY
collect_result

start_test multiple-livepatches
load_lp $LP
load_lp $LP2
disable_lp $LP2
disable_lp $LP
unload_lp $LP2
unload_lp $LP
collect_result

start_test atomic-replace
load_lp $LP
load_lp $LP2 replace=1
disable_lp $LP2
unload_lp $LP2
unload_lp $LP
collect_result

# The stalls: without tracing, the harness cannot see the tries that klptrace's
# wait_blocked steps wait for; it waits for what sysfs and the kernel log show.
start_test stall-reader-signal-round
load_mod $STALL
spawn_reader interruptible
load_lp_nowait $STALL_LP
wait_transition $STALL_LP 1
wait_transition $STALL_LP 0	# the 16th try's fake signal moves the reader
reap_reader
disable_lp $STALL_LP
unload_lp $STALL_LP
unload_mod $STALL
collect_result

start_test stall-reader-uninterruptible
load_mod $STALL
spawn_reader uninterruptible
load_lp_nowait $STALL_LP
wait_transition $STALL_LP 1
if [[ $DRY_RUN == 0 ]]; then	# after the signal round, which does not move it
	loop_until 'dmesg | awk -v l="$LAST_DMESG" "p; \$0 == l { p=1 }" |
		grep -q "signaling remaining tasks"' || die "no signal round"
fi
disable_lp $STALL_LP
set_param $STALL hold_uninterruptible N
reap_reader
unload_lp $STALL_LP
unload_mod $STALL
collect_result

start_test stall-sleeping-kthread
load_mod $STALL kthread=Y
load_lp_nowait $STALL_LP
wait_transition $STALL_LP 1
wait_param $STALL wakeups 1	# woken by the signal round, asleep there again
set_param $STALL hold_kthread N
wait_transition $STALL_LP 0
disable_lp $STALL_LP
unload_lp $STALL_LP
unload_mod $STALL
collect_result

# States and shadow variables (klptrace_shadow_lp.h)
start_test state-setup-teardown
load_mod $SHADOW
load_lp $SLP1
disable_lp $SLP1
unload_lp $SLP1
unload_mod $SHADOW
collect_result

start_test state-taken-over-by-replace
load_mod $SHADOW
load_lp $SLP1
load_lp $SLP2
disable_lp $SLP2
unload_lp $SLP2
unload_lp $SLP1
unload_mod $SHADOW
collect_result

start_test compatible-cumulative-versions
load_mod $SHADOW
load_lp $SLP2
load_lp $SLP3
unload_lp $SLP2
disable_lp $SLP3
unload_lp $SLP3
unload_mod $SHADOW
collect_result

start_test incompatible-version-refused
load_mod $SHADOW
load_lp $SLP3
load_failing_mod $SLP2
load_failing_mod $SLP1
disable_lp $SLP3
unload_lp $SLP3
unload_mod $SHADOW
collect_result

start_test shadow-kept-across-replace
load_mod $SHADOW
load_lp $SLP1
load_lp $SLP2
unload_lp $SLP1
disable_lp $SLP2
unload_lp $SLP2
unload_mod $SHADOW
collect_result

start_test shadow-leak-reported
load_mod $SHADOW
load_lp $SLP1 leak=Y
disable_lp $SLP1
unload_lp $SLP1
unload_mod $SHADOW
collect_result

exit 0
