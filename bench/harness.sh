#!/bin/bash
# The 11 scenarios of klptrace run the way the kernel's livepatch selftests run
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

exit 0
